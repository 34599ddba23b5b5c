"""``brainmri report RUN``: one self-contained HTML file built from result files only.

A fake run folder (tiny PNGs and JSON written here) checks the sections, that every image is inlined,
that no external URL appears, that strings from files are escaped, and that a missing file makes its
section say "not run". A headless Chromium (Debian's, driven by Playwright as in test_serve_browser.py)
opens the generated file and the committed copy and checks that every image decoded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from brainmri.cli import main
from brainmri.layout import Layout
from brainmri.report import Options, resolve_inputs, write_report
from brainmri.report.sections import SECTIONS, conformal_tables
from browser_support import chromium_path

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "results" / "report.html"
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
EVIL = "<script>alert('x')</script>"
REPORT_FIGURES = ("confusion_matrix.png", "roc_pr.png", "reliability.png", "confidence_hist.png", "tumour_roc.png",
                  "error_gallery.png")  # fmt: skip


def _png(path: Path, size: tuple[int, int] = (40, 24), color: tuple[int, int, int] = (30, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _ci(v: float) -> dict:
    return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.03, "ci_method": "bootstrap"}


def _data(work: Path) -> Path:
    """Audit, split (with an excluded file whose reason holds markup) and data card under ``work``."""
    audit = {"files": 12, "readable": 12, "per_label": {c: 3 for c in CLASSES}, "hash_size": 8, "near_threshold": 4,
             "unreadable": {"count": 0}, "exact": {"clusters": 1, "redundant_files": 1, "cluster_list": []},
             "near": {"pairs": 2, "pair_list": []}, "distance_histogram": {"0": {"pairs": 2, "different_labels": 0}},
             "montage": {"pairs": [{"a": "s/a.png", "b": "s/b.png", "distance": 0}]}}  # fmt: skip
    _json(work / "data" / "audit" / "audit.json", audit)
    _png(work / "data" / "audit" / "near_duplicates.png", (60, 30))
    split = {"version": 1, "manifest": str(work / "data" / "manifest.csv"), "seed": 42, "classes": CLASSES,
             "train": ["s/1.png", "s/2.png"], "val": ["s/3.png"], "test": ["s/4.png"], "folds": [],
             "excluded": [{"id": "s/b.png", "reason": f"exact duplicate of s/a.png {EVIL}"},
                          {"id": "s/c.png", "reason": "unreadable"}]}  # fmt: skip
    path = _json(work / "data" / "split.json", split)
    _json(work / "data" / "data_card.json", {"splits": {"train": {c: 1 for c in CLASSES} | {"total": 4}}})
    return path


def _metrics() -> dict:
    per_class = {c: {"sensitivity": _ci(0.8), "specificity": _ci(0.9), "support": 5} for c in CLASSES}
    block = {"n": 20, "accuracy": _ci(0.85), "f1_macro": _ci(0.84), "ece": _ci(0.05), "nll": _ci(0.3),
             "per_class": per_class}  # fmt: skip
    setting = {"coverage": _ci(0.9), "mean_set_size": _ci(1.2), "n": 20, "qhat": 0.5, "set_size_counts": {"1": 18},
               "per_class": {c: {"coverage": 0.9, "mean_set_size": 1.1, "n": 5} for c in CLASSES}}  # fmt: skip
    return {"run": "fake", "split": "test", "source": "test", "n": 20, "bootstrap": {"resamples": 50},
            "multiclass": {"uncalibrated": block, "calibrated": block | {"ece": _ci(0.03)}},
            "conformal": {"lac": {"0.1": setting, "0.05": setting}, "primary_method": "lac"},
            "tumour_vs_no_tumour": {"calibrated": {"sensitivity": _ci(0.97), "threshold": 0.5}},
            "confused_pairs": [{"true": "no_tumor", "predicted": "meningioma", "count": 2}],
            "error_gallery": [{"id": "s/4.png", "caption": "true: glioma; pred: meningioma (0.9)"}]}  # fmt: skip


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, Path]:
    """A complete fake run: run folder, work folder, benchmark results, bundle card."""
    work, run, results = tmp_path / "work", tmp_path / "runs" / "fake", tmp_path / "results"
    split = _data(work)
    sha = hashlib.sha256(split.read_bytes()).hexdigest()
    _json(run / "run.json", {"name": "fake", "classes": CLASSES, "split_file": str(split), "split_sha256": sha,
                             "backbone": "test_efficientnet", "best_epoch": "stage2:1"})  # fmt: skip
    (run / "config.yaml").write_text(f"train:\n  run_name: fake  # {EVIL}\n")
    _png(run / "curves.png", (50, 20))
    _json(run / "history.json", [{"stage": 1, "epoch": 0, "val_loss": 0.5}, {"stage": 2, "epoch": 0, "val_loss": 0.4}])
    _json(run / "calibration.json", {"fitted_on": "val", "n": 10, "temperature": 0.8, "threshold": 0.5})
    _json(run / "reports" / "metrics.json", _metrics())
    _json(run / "reports" / "summary.json", {"split": "test", "n": 20, "accuracy": _ci(0.85)})
    (run / "reports" / "classification_report.txt").write_text("precision recall\n")
    for i, name in enumerate(REPORT_FIGURES):
        _png(run / "reports" / name, (30 + i, 20))
    _png(run / "preprocess_steps.png", (80, 16))  # a run that carries its own steps figure: no rendering
    _json(results / "robustness.json", {"run": "fake", "summary": {"mean_drop": 1.5, "worst_corruption": "blur"}})
    _json(results / "external.json", {"run": "/somewhere/runs/another-run", "sets": {}})
    bundle = tmp_path / "bundles" / "fake"
    _json(bundle / "card.json", {"name": "fake", "task": "classification", "versions": {"torch": "9.9.9"},
                                 "ood": {"base64": "A" * 5000}})  # fmt: skip
    return {"run": run, "work": work, "results": results, "bundle": bundle, "root": tmp_path}


def _layout(root: Path, work: Path) -> Layout:
    return Layout(work, root / "runs", root / "bundles")


def _write(fake: dict[str, Path], **kw) -> str:
    out = write_report(fake["run"], _layout(fake["root"], fake["work"]), results_dir=fake["results"], **kw)
    return out.read_text(encoding="utf-8")


def test_report_has_every_section_inlined_images_and_no_external_url(fake):
    html = _write(fake)
    for anchor, title, _ in SECTIONS:
        assert f'<section id="{anchor}">' in html, title
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(srcs) == len(REPORT_FIGURES) + 3  # + near duplicates, curves, preprocessing steps
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    links = re.findall(r'\s(?:src|href)="([^"]*)"', html)
    assert links and not [u for u in links if u.lower().startswith(("http://", "https://", "//", "file:"))]
    assert "<link" not in html and "<script" not in html  # no stylesheet or script from anywhere
    assert "@media print" in html
    # numbers from the files, with their CIs
    assert "0.85 [0.8, 0.88]" in html and "temperature" in html
    assert "lac / 0.05" in html  # conformal per alpha; per class rows too
    assert html.count("lac / 0.1</td><td>") >= 1 + len(CLASSES)
    assert "9.9.9" in html and "recorded at export" in html  # versions from the bundle card
    assert "A" * 1000 not in html  # the card's large OOD state is left out


def test_strings_from_files_are_escaped(fake):
    html = _write(fake)
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html  # excluded reason and config.yaml
    assert html.count("&lt;script&gt;") >= 2


def test_missing_files_say_not_run(fake):
    shutil.rmtree(fake["work"] / "data" / "audit")
    (fake["run"] / "calibration.json").unlink()
    html = _write(fake)
    audit = html.split('<section id="data">', 1)[1].split("</section>", 1)[0]
    assert "Not run" in audit and "audit.json" in audit
    further = html.split('<section id="further">', 1)[1].split("</section>", 1)[0]
    assert further.count("Not run") >= 3  # kfold, ablation, slice groups: no files
    ext = html.split('<section id="external">', 1)[1].split("</section>", 1)[0]
    assert "Not run for this run" in ext and "another-run" in ext  # a result of another run is not shown as ours
    rob = html.split('<section id="robustness">', 1)[1].split("</section>", 1)[0]
    assert "Not run" not in rob and "blur" in rob


def test_bare_run_folder_renders_with_every_section_not_run(tmp_path):
    run = tmp_path / "runs" / "bare"
    _json(run / "run.json", {"name": "bare", "classes": CLASSES})
    out = write_report(run, Layout(tmp_path / "work", tmp_path / "runs", tmp_path / "bundles"),
                       results_dir=tmp_path / "none", opts=Options(render_steps=False))  # fmt: skip
    html = out.read_text()
    assert out == run / "report.html"
    assert "<img" not in html
    for anchor in ("data", "split", "metrics", "conformal", "external", "robustness", "card"):
        section = html.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]
        assert "Not run" in section, anchor
    assert "This section failed" not in html


def test_cli_defaults_overrides_and_clear_errors(fake, capsys):
    args = ["report", str(fake["run"]), "--work-dir", str(fake["work"]), "--results", str(fake["results"])]
    assert main([*args, "--bundle", str(fake["bundle"])]) == 0
    html = (fake["run"] / "report.html").read_text()
    assert "9.9.9" in html and "near_duplicates.png" in html
    out = fake["root"] / "elsewhere" / "r.html"
    assert main([*args, "--out", str(out), "--image-width", "20"]) == 0
    assert out.is_file() and 'width="20"' in out.read_text()  # figures wider than 20 px were downscaled
    capsys.readouterr()
    assert main(["report", str(fake["work"])]) == 2
    assert "not a run folder (no run.json)" in capsys.readouterr().err
    assert main(["report", str(fake["root"] / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main([*args, "--bundle", str(fake["work"])]) == 2
    assert "not a bundle folder" in capsys.readouterr().err


def test_split_file_prefers_the_one_the_run_was_trained_on(fake, tmp_path):
    other = _json(tmp_path / "other" / "data" / "split.json", {"version": 1, "excluded": []})
    inp = resolve_inputs(fake["run"], _layout(fake["root"], other.parent.parent))
    assert inp.split_file == fake["work"] / "data" / "split.json" and inp.split_sha_matches() is True


@pytest.mark.parametrize(
    "value",
    [
        {"mondrian": {"0.1": {"coverage": 0.91, "mean_set_size": 1.3, "per_class": {"glioma": {"coverage": 0.88}}}},
         "raps": {"0.2": {"coverage": 0.8, "mean_set_size": 1.1}}},
        [{"method": "raps", "alpha": 0.1, "coverage": 0.9}, {"method": "mondrian", "alpha": 0.05, "coverage": 0.95}],
    ],
)  # fmt: skip
def test_conformal_tables_render_other_layouts(value):
    html = conformal_tables(value)
    assert "<table" in html
    if isinstance(value, dict):
        assert "mondrian / 0.1" in html and "raps / 0.2" in html and "glioma" in html
    else:
        assert "mondrian" in html and "0.95" in html


def test_preprocessing_figure_is_rendered_from_the_runs_preprocessor(fake):
    pytest.importorskip("matplotlib")
    from brainmri.config import load_config
    from brainmri.data.phantoms import make_phantom
    from brainmri.preprocess import Preprocessor

    (fake["run"] / "preprocess_steps.png").unlink()
    images = [make_phantom(c, 64, seed=i).image.astype("float32") for i, c in enumerate(CLASSES)]
    pre = Preprocessor.from_config(load_config(None, ["preprocess.size=48"]).preprocess).fit(images)
    pre.save(fake["run"] / "preprocessor.json")
    image = fake["root"] / "img" / "4.png"
    image.parent.mkdir()
    Image.fromarray((images[0] * 255).astype("uint8")).save(image)
    with (fake["work"] / "data" / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["id", "path", "label", "readable"], ["s/4.png", str(image), "glioma", "true"]])
    html = _write(fake)
    section = html.split('<section id="preprocessing">', 1)[1].split("</section>", 1)[0]
    assert "<img" in section and "s/4.png" in section, section[:500]


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def image_states(browser, path: Path) -> list[tuple[str, bool, int]]:
    """(alt, complete, naturalWidth) of every <img> once the file:// page has loaded; fails on page errors
    and on any request that is not a data: URI or the file itself (nothing may come from elsewhere)."""
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    states = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    page.close()
    assert [u for u in requests if not u.startswith(("data:", "file:"))] == []
    return [tuple(s) for s in states]


def test_every_image_loads_in_headless_chromium(fake, browser, tmp_path):
    out = fake["run"] / "report.html"
    _write(fake)
    states = image_states(browser, out)
    assert len(states) == len(REPORT_FIGURES) + 3
    assert [s for s in states if not (s[1] and s[2] > 0)] == []
    # the check can fail: a report with one undecodable image is caught
    broken = tmp_path / "broken.html"
    broken.write_text(out.read_text().replace("</body>", '<img alt="bad" src="data:image/png;base64,AAAA"></body>'))
    bad = [s for s in image_states(browser, broken) if s[2] == 0]
    assert [s[0] for s in bad] == ["bad"]


def test_committed_report_images_load_in_headless_chromium(browser):
    if not COMMITTED.is_file():
        pytest.skip(f"{COMMITTED} not generated yet (see docs/report.md)")
    assert COMMITTED.stat().st_size < 3_000_000
    states = image_states(browser, COMMITTED)
    assert len(states) >= 8
    assert [s for s in states if not (s[1] and s[2] > 0)] == []


def test_robustness_shows_the_result_made_from_this_run_folder(fake):
    """Two results may name a run ``fake``; the one whose run_dir is this folder wins, the newest of those."""
    here = str(fake["run"].resolve())
    _json(fake["results"] / "robustness_old.json", {"run": "fake", "run_dir": here, "created": "2026-01-01",
                                                    "summary": {"worst_corruption": "jpeg"}})  # fmt: skip
    _json(fake["results"] / "robustness_rerun.json", {"run": "fake", "run_dir": here, "created": "2026-02-01",
                                                      "summary": {"worst_corruption": "gamma"}})  # fmt: skip
    _json(fake["results"] / "robustness_elsewhere.json", {"run": "fake", "run_dir": "/elsewhere/runs/fake",
                                                          "created": "2027-01-01", "summary": {}})  # fmt: skip
    rob = _write(fake).split('<section id="robustness">', 1)[1].split("</section>", 1)[0]
    assert "robustness_rerun.json" in rob and "gamma" in rob and "jpeg" not in rob and "blur" not in rob
