"""The README and docs/*.md quote result files only through generated blocks (bench/render_readme.py): the
committed pages must match what the committed results render to, and every block must have a renderer."""

from __future__ import annotations

import re

import pytest

from bench_support import load_bench

render_readme = load_bench("render_readme")
PAGES = render_readme.rendered_pages()
MARKER = re.compile(r"<!-- generated:([a-z0-9_]+) -->")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_matches_its_result_files(page):
    text = page.read_text()
    assert render_readme.render(text) == text, f"{page.name} is stale: run python bench/render_readme.py"


def test_every_block_has_a_renderer_and_a_page():
    used = {name for page in PAGES for name in MARKER.findall(page.read_text())}
    assert used <= set(render_readme.BLOCKS), sorted(used - set(render_readme.BLOCKS))
    assert set(render_readme.BLOCKS) <= used, sorted(set(render_readme.BLOCKS) - used)
