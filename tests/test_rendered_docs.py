"""The README and docs/*.md quote result files only through generated blocks (bench/render_readme.py): the
committed pages must match what the committed results render to, and every block must have a renderer."""

from __future__ import annotations

import re

import pytest

import test_bundle_support as support
from bench_support import load_bench

render_readme = load_bench("render_readme")
tiny_run_dir = support.tiny_run_dir
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


def test_publish_finds_the_bundle_check_where_the_run_config_put_it(tiny_run_dir, tmp_path):
    """runs_dir and work_dir are separate keys: the check is looked up from the run's config, not its path."""
    import shutil

    from brainmri.config import load_config, save_config

    run = tmp_path / "runs" / "x"
    shutil.copytree(tiny_run_dir, run)
    work = tmp_path / "elsewhere" / "work"
    save_config(load_config(run / "config.yaml", [f"paths.work_dir={work}"]), run / "config.yaml")
    assert render_readme.pipeline_bundle_check(run) == work / "pipeline" / "bundle_check.json"
