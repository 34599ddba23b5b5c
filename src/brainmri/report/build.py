"""Assemble the report: every section in reading order, a contents list, inline CSS; one atomic write."""

from __future__ import annotations

import time
from pathlib import Path

from brainmri.layout import Layout
from brainmri.report.html import CSS, esc
from brainmri.report.sections import SECTIONS, Options
from brainmri.report.sources import Inputs, resolve_inputs
from brainmri.report.versions import installed_versions
from brainmri.utils import atomic_write_text


def render_report(inp: Inputs, opts: Options | None = None) -> str:
    """The whole HTML document as a string."""
    opts = opts or Options()
    body = []
    for anchor, title, fn in SECTIONS:
        try:
            content = fn(inp, opts)
        except Exception as exc:  # one broken result file must not hide the rest of the report
            inp.problems.append(f"section '{title}': {type(exc).__name__}: {exc}")
            content = f'<p class="missing">This section failed: {esc(type(exc).__name__)}: {esc(exc)}</p>'
        body.append(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{content}</section>')
    toc = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t, _ in SECTIONS)
    version = installed_versions(["brainmri"]).get("brainmri") or "(not installed)"
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>brainmri report: {esc(inp.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>brainmri report: run <code>{esc(inp.name)}</code></h1>"
        f'<p class="meta">Run folder {esc(inp.run_dir)}; made {esc(made)} by brainmri {esc(version)} '
        "(<code>brainmri report</code>) from result files only. Sections whose file is missing say "
        "&ldquo;not run&rdquo;.</p></header>"
        f'<nav><h2 style="break-before:auto">Contents</h2><ol>{toc}</ol></nav>' + "".join(body) + "</body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    layout: Layout,
    out: str | Path | None = None,
    results_dir: str | Path | None = None,
    bundle_dir: str | Path | None = None,
    opts: Options | None = None,
) -> Path:
    """Write ``out`` (default ``RUN/report.html``) atomically and return its path."""
    inp = resolve_inputs(run_dir, layout, results_dir, bundle_dir)
    target = Path(out) if out is not None else inp.run_dir / "report.html"
    html = render_report(inp, opts)
    return atomic_write_text(target, html)
