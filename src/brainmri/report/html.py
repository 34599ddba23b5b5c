"""HTML building blocks of the report: escaping, inlined images, tables, and a generic JSON renderer.

Every string that comes from a file goes through :func:`esc`; images become ``data:`` URIs, so the page
needs nothing but itself (no network, no neighbouring files). The generic renderer turns any JSON value
into nested tables, so a result file whose layout changes (new keys, new rows) still renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_ROWS = 40  # rows of one table before "… N more rows"
MAX_LIST = 20  # items of a list of scalars shown inline
MAX_TEXT = 600  # characters of one string before it is cut
MAX_DEPTH = 4  # nesting of the generic renderer before it prints compact JSON
MAX_COLUMNS = 14  # a dict of dicts with more flattened columns than this renders as nested key/value tables


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def is_ci(value: Any) -> bool:
    """A metric with a confidence interval: ``{"value": v, "ci_low": lo, "ci_high": hi, ...}``."""
    return isinstance(value, Mapping) and "value" in value and "ci_low" in value


def fmt_number(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) >= 100 else f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def fmt_ci(value: Mapping[str, Any]) -> str:
    v = value.get("value")
    if v is None:
        return "n/a"
    lo, hi = value.get("ci_low"), value.get("ci_high")
    if lo is None or hi is None:
        return fmt_number(v)
    return f"{fmt_number(v)} [{fmt_number(lo)}, {fmt_number(hi)}]"


def cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def scalar_html(value: Any) -> str:
    """A scalar or a CI metric as escaped text."""
    if value is None:
        return '<span class="na">—</span>'
    if is_ci(value):
        return esc(fmt_ci(value))
    if isinstance(value, bool | int | float):
        return esc(fmt_number(value))
    return esc(cut(str(value)))


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float) or is_ci(value)


def flatten(d: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any] | None:
    """Dotted keys -> scalar leaves (CI metrics and short lists of scalars count as leaves); ``None`` when
    ``d`` holds a list of objects or nests too deep to read as one table row."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if is_scalar(v):
            out[key] = v
        elif isinstance(v, list) and all(is_scalar(x) for x in v):
            out[key] = ", ".join(fmt_ci(x) if is_ci(x) else fmt_number(x) for x in v[:MAX_LIST])
        elif isinstance(v, Mapping) and depth < 2:
            inner = flatten(v, f"{key}.", depth + 1)
            if inner is None:
                return None
            out.update(inner)
        else:
            return None
    return out


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", total: int | None = None) -> str:
    """A table from already-escaped cell HTML; ``total`` (the full row count) adds a "more rows" line."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    more = ""
    if total is not None and total > len(body):
        more = f'<p class="more">… {total - len(body)} more rows not shown (of {total}).</p>'
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def rows_table(rows: Sequence[Mapping[str, Any]], max_rows: int = MAX_ROWS, first: str = "") -> str:
    """List of dicts -> table; columns are the union of (flattened) keys in first-seen order."""
    flat = [flatten(r) or {k: v for k, v in r.items() if is_scalar(v)} for r in rows[:max_rows]]
    columns: list[str] = [first] if first else []
    for r in flat:
        columns += [k for k in r if k not in columns]
    cells = [[scalar_html(r.get(c)) for c in columns] for r in flat]
    return table(columns, cells, total=len(rows))


def kv_table(d: Mapping[str, Any], depth: int = 0) -> str:
    """Key / value table; values render recursively."""
    rows = [(f"<th>{esc(k)}</th>", render_json(v, depth + 1)) for k, v in d.items()]
    body = "".join(f"<tr>{k}<td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def render_json(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: scalars, lists of scalars inline, lists of objects and uniform dicts of
    objects as tables, everything else as nested key/value tables."""
    if is_scalar(value):
        return scalar_html(value)
    if depth >= MAX_DEPTH:
        return f"<code>{esc(cut(json.dumps(value, default=str), 300))}</code>"
    if isinstance(value, list):
        if not value:
            return '<span class="na">(empty)</span>'
        if all(is_scalar(x) for x in value):
            shown = ", ".join(scalar_html(x) for x in value[:MAX_LIST])
            return shown + (f" … ({len(value)} in all)" if len(value) > MAX_LIST else "")
        if all(isinstance(x, Mapping) for x in value):
            return rows_table(value)
        return "<br>".join(render_json(x, depth + 1) for x in value[:MAX_LIST])
    if isinstance(value, Mapping):
        if not value:
            return '<span class="na">(empty)</span>'
        if depth >= 1 and len(value) <= 8 and all(is_scalar(v) and not is_ci(v) for v in value.values()):
            return "; ".join(f"{esc(k)} {scalar_html(v)}" for k, v in value.items())  # short: one line
        records = dict_of_records(value)
        if records is not None:
            return rows_table(records, first="key")
        return kv_table(value, depth)
    return scalar_html(str(value))


def dict_of_records(d: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """``{name: {flat dict}}`` with at least two entries -> rows ``{"key": name, ...}``; else ``None``."""
    if len(d) < 2 or not all(isinstance(v, Mapping) and not is_ci(v) for v in d.values()):
        return None
    rows = []
    columns: set[str] = set()
    for k, v in d.items():
        flat = flatten(v)
        if flat is None:
            return None
        columns |= set(flat)
        rows.append({"key": k, **flat})
    return rows if len(columns) <= MAX_COLUMNS else None


def image_data_uri(path: Path, max_width: int = 0, jpeg_over: int = 300_000) -> tuple[str, int, int]:
    """The image as a ``data:`` URI (downscaled to ``max_width`` when wider; re-encoded as JPEG when that is
    smaller and the PNG is over ``jpeg_over`` bytes); returns (uri, width, height)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        image = im.convert("RGBA") if im.mode in ("P", "LA") else im.copy()
    if max_width and image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    data, mime = buf.getvalue(), "image/png"
    if len(data) > jpeg_over:
        jbuf = io.BytesIO()
        image.convert("RGB").save(jbuf, format="JPEG", quality=85, optimize=True)
        if jbuf.tell() < len(data):
            data, mime = jbuf.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", image.width, image.height


def figure(path: Path, caption: str, max_width: int = 0) -> str:
    """``<figure>`` with the inlined image, or a note saying why it is missing."""
    if not path.is_file():
        return f'<p class="missing">Figure not available: no file {esc(path)}.</p>'
    try:
        uri, w, h = image_data_uri(path, max_width)
    except Exception as exc:  # a corrupt figure must not stop the report
        return f'<p class="missing">Figure {esc(path)} could not be read: {esc(exc)}</p>'
    return (
        f'<figure><img src="{uri}" alt="{esc(caption)}" width="{w}" height="{h}">'
        f'<figcaption>{esc(caption)} <span class="src">({esc(path.name)})</span></figcaption></figure>'
    )


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def not_run(what: str, looked_for: Path | str | None = None, hint: str = "") -> str:
    where = f" (no file {esc(looked_for)})" if looked_for is not None else ""
    extra = f" {esc(hint)}" if hint else ""
    return f'<p class="missing"><strong>Not run</strong>: {esc(what)}{where}.{extra}</p>'


CSS = """
:root { --fg: #1b1f24; --muted: #59636e; --line: #d0d7de; --bg-alt: #f6f8fa; --warn: #9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); max-width: 1200px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.35em; border-bottom: 2px solid var(--line); padding-bottom: .2em; margin-top: 2.2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
.meta, .src, .more, figcaption { color: var(--muted); font-size: .92em; }
nav ol { columns: 2; font-size: .95em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9em; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: var(--bg-alt); }
table.kv > tbody > tr > th { background: var(--bg-alt); font-weight: 600; white-space: nowrap; }
td table { margin: 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
pre { background: var(--bg-alt); padding: .8em; overflow-x: auto; font-size: .85em; white-space: pre-wrap; }
code { font-size: .88em; }
.missing { color: var(--warn); background: #fff8c5; padding: .4em .7em; border-left: 3px solid var(--warn); }
.na { color: var(--muted); }
.note { background: var(--bg-alt); padding: .5em .8em; border-left: 3px solid var(--line); }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  nav { display: none; }
  h2 { break-before: page; }
  h2, h3 { break-after: avoid; }
  figure, table, pre { break-inside: avoid; }
  figure img { max-height: 24cm; }
  pre { white-space: pre-wrap; }
  a { color: inherit; text-decoration: none; }
}
"""
