"""External validation (``brainmri validate``): thresholds, grouped split, bad input, outputs, lgg-flair subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmri.config import load_config

pytest.importorskip("brainmri.preprocess.cache")

FAST = ["--set", "external.bootstrap=50", "--set", "external.min_images=30"]


# ------------------------------------------------------------------------------------------------ pure parts


def test_threshold_rules_on_a_known_case():
    from brainmri.evaluate.external import choose_thresholds, cost_threshold, youden_threshold

    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.35, 0.7, 0.8, 0.9, 0.95])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert youden_threshold(p, y) == pytest.approx(0.7)  # sens 0.8, spec 1.0: J = 0.8 (0.35 gives J = 0.6)
    # FN costs 5 FP: calling everything from 0.35 up (1 FP more at 0.4, 0.6) beats missing 0.35
    assert cost_threshold(p, y, 5.0) == pytest.approx(0.35)
    assert cost_threshold(p, y, 0.1) == pytest.approx(0.7)
    ecfg = load_config(None, ["external.target_sensitivity=1.0"]).external
    chosen = choose_thresholds(p, y, ecfg)
    assert chosen["target_sensitivity"]["threshold"] == pytest.approx(0.35)
    assert chosen["target_sensitivity"]["on_calibration"]["sensitivity"] == 1.0
    assert set(chosen) == {"target_sensitivity", "youden", "cost"}


def test_cost_threshold_never_calls_nothing_when_misses_are_expensive():
    from brainmri.evaluate.external import cost_threshold

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.normal(0.4, 0.2, 200), 0, 1)
    t = cost_threshold(p, y, 1000.0)
    assert (p[y == 1] >= t).all()


def test_patient_bootstrap_resamples_whole_patients():
    from brainmri.evaluate.external import patient_bootstrap
    from brainmri.evaluate.metrics import bootstrap_counts

    groups = np.array(["a", "a", "a", "b", "b", "c"])
    w = bootstrap_counts(6, 200, seed=1, groups=groups)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 3] == w[:, 4]).all()
    assert np.allclose(w.sum(1) % 1, 0)
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.3])
    y = np.array([1, 1, 0, 1, 0, 0])
    out = patient_bootstrap(p, y, groups, 0.5, 200, seed=1)
    assert out["sensitivity"]["value"] == 1.0 and out["auc"]["value"] == 1.0
    assert out["specificity"]["ci_method"] == "patient bootstrap"


def test_grouped_split_keeps_groups_whole_and_is_seeded():
    from brainmri.data.external import grouped_split

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    y = rng.integers(0, 2, 200)
    a = grouped_split(y, groups, 0.5, seed=3)
    b = grouped_split(y, groups, 0.5, seed=3)
    assert (a == b).all()
    assert not set(groups[a]) & set(groups[~a])
    assert 0.35 < a.mean() < 0.65
    small = grouped_split(y, groups, 0.25, seed=3)
    assert 0.15 < small.mean() < 0.35


def test_binary_temperature_refit_lowers_calibration_nll():
    from brainmri.evaluate.external import fit_binary_temperature

    rng = np.random.default_rng(0)
    classes = ["glioma", "meningioma", "no_tumor", "pituitary"]
    y = rng.integers(0, 2, 300)
    z = rng.normal(0, 1, (300, 4))
    shown = np.where(rng.random(300) < 0.2, 1 - y, y)  # 20% wrong, all with the same huge margin
    z[:, 2] += np.where(shown == 0, 8.0, -8.0)
    fit = fit_binary_temperature(z, y, classes)
    assert fit["temperature"] > 1.5 and fit["nll_after"] < fit["nll_before"]


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from external_support import tiny_run

    return tiny_run(tmp_path_factory.mktemp("ext_run"))


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_validate_writes_the_protocol_outputs(tiny, tmp_path, capsys):
    from brainmri.cli import main
    from external_support import phantom_csv_set

    csv = phantom_csv_set(tmp_path / "ext")
    out = tmp_path / "out"
    rc = main(["validate", str(tiny.dir), str(csv), "--out", str(out), "--refit-temperature", *FAST])
    assert rc == 0, _err(capsys)
    files = {p.name for p in out.iterdir()}
    assert {"external.json", "predictions.csv", "split.json", "roc.png", "reliability.png", "config.yaml"} <= files
    res = json.loads((out / "external.json").read_text())
    split = json.loads((out / "split.json").read_text())
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    # patient-disjoint, everything accounted for
    cal_p = set(pred[pred["part"] == "calibration"]["patient"])
    ev_p = set(pred[pred["part"] == "evaluation"]["patient"])
    assert cal_p and ev_p and not cal_p & ev_p
    assert res["group_by"] == "patient"
    c = res["counts"]
    assert c["calibration"] + c["evaluation"] == c["usable"] == c["readable"] - c["removed_overlap"] == 48
    assert len(split["calibration"]) == c["calibration"] and split["kind"] == "external"
    v = res["views"]["run_temperature"]
    assert set(v["thresholds"]) == {"run", "target_sensitivity", "youden", "cost"}
    ev = v["thresholds"]["youden"]["evaluation"]
    assert ev["sensitivity"]["ci_method"] == "clopper-pearson"
    assert ev["patient_bootstrap"]["auc"]["ci_method"] == "patient bootstrap"
    assert "refit_temperature" in res["views"] and res["views"]["refit_temperature"]["fit"]["n"] == c["threshold_fit"]
    assert res["per_class"] is None  # binary labels only

    # the saved split is reused as is
    out2 = tmp_path / "out2"
    assert (
        main(["validate", str(tiny.dir), str(csv), "--out", str(out2), "--split-file", str(out / "split.json"), *FAST])
        == 0
    )
    res2 = json.loads((out2 / "external.json").read_text())
    assert res2["views"]["run_temperature"]["auc"] == v["auc"] and not (out2 / "split.json").exists()


def test_validate_folder_set_without_patients_groups_by_cluster(tiny, tmp_path, capsys):
    from brainmri.cli import main
    from external_support import phantom_csv_set

    csv = phantom_csv_set(tmp_path / "ext", classes=("glioma", "no_tumor"), patients=False)
    csv.unlink()  # a plain folder set: glioma/ and no_tumor/
    out = tmp_path / "out"
    assert main(["validate", str(tiny.dir), str(csv.parent), "--out", str(out), *FAST]) == 0, _err(capsys)
    res = json.loads((out / "external.json").read_text())
    assert res["group_by"] == "near-duplicate cluster"
    assert "patient_bootstrap" not in res["views"]["run_temperature"]["thresholds"]["run"]["evaluation"]
    assert res["per_class"]["n"] == res["counts"]["evaluation"]  # labels name classes: a 4-class view


def test_validate_a_bundle_like_its_run(tiny, tmp_path, capsys):
    """A site with only the bundle gets the run's numbers; without the training split, overlap is 'not checked'."""
    from brainmri.bundle import export_bundle
    from brainmri.bundle.source import BundleSource
    from brainmri.cli import main
    from external_support import phantom_csv_set

    bundle = export_bundle(tiny.dir, tmp_path / "bundle")
    csv = phantom_csv_set(tmp_path / "ext")
    by_run, by_bundle = tmp_path / "by_run", tmp_path / "by_bundle"
    assert main(["validate", str(tiny.dir), str(csv), "--out", str(by_run), *FAST]) == 0, _err(capsys)
    split = ["--split-file", str(by_run / "split.json")]
    assert main(["validate", str(bundle), str(csv), "--out", str(by_bundle), *split, *FAST]) == 0, _err(capsys)
    a, b = (json.loads((d / "external.json").read_text()) for d in (by_run, by_bundle))
    assert b["run"] == str(bundle) and b["calibration_source"].endswith("card.json (calibration)")
    assert b["overlap"]["against"] == a["overlap"]["against"] and b["counts"] == a["counts"]
    va, vb = a["views"]["run_temperature"], b["views"]["run_temperature"]
    assert vb["auc"]["value"] == pytest.approx(va["auc"]["value"], abs=1e-6)
    assert vb["thresholds"]["youden"]["threshold"] == pytest.approx(va["thresholds"]["youden"]["threshold"], abs=1e-5)

    source = BundleSource.load(bundle, 4)
    source.bundle.card = {**source.bundle.card, "data": {**source.bundle.card["data"], "split_file": "/nowhere.json"}}
    frame = pd.DataFrame({"id": ["x", "y"], "md5": ["0", "1"], "phash": ["0" * 16, "f" * 16]})
    keep, overlap = source.without_training_overlap(frame, "site")
    assert keep.all() and overlap["checked"] is False and "/nowhere.json" in overlap["why_not"]
    assert "NOT checked" in capsys.readouterr().out


def test_validate_reports_the_out_of_domain_gate_on_the_site_set(tiny, tmp_path, capsys):
    """Without a fitted gate validation says so; with one (fitted by evaluation's fit_ood) it reports the share
    flagged and the metrics on what passes and on what is flagged, for the run and its bundle alike."""
    import shutil

    from brainmri.bundle import export_bundle
    from brainmri.cli import main
    from brainmri.evaluate.domain import fit_ood
    from brainmri.runs import Run
    from external_support import phantom_csv_set

    csv = phantom_csv_set(tmp_path / "ext")
    assert main(["validate", str(tiny.dir), str(csv), "--out", str(tmp_path / "none"), *FAST]) == 0, _err(capsys)
    assert json.loads((tmp_path / "none" / "external.json").read_text())["gate"] is None
    assert "out-of-domain gate: none fitted" in capsys.readouterr().out

    run = Run.load(shutil.copytree(tiny.dir, tmp_path / "runs" / "gated"))
    fit_ood(run, run.build_model(), "val", quantile=0.9, batch_size=16)
    bundle = export_bundle(run, tmp_path / "bundle")
    split = ["--split-file", str(tmp_path / "none" / "split.json")]
    results = []
    for source, out in ((run.dir, tmp_path / "by_run"), (bundle, tmp_path / "by_bundle")):
        assert main(["validate", str(source), str(csv), "--out", str(out), *split, *FAST]) == 0, _err(capsys)
        results.append(json.loads((out / "external.json").read_text()))
    gate, n = results[0]["gate"], results[0]["counts"]["evaluation"]
    assert gate["passed"]["n"] + gate["flagged_subset"]["n"] == n
    assert gate["flagged"] == pytest.approx(gate["flagged_subset"]["n"] / n)
    pred = pd.read_csv(tmp_path / "by_run" / "predictions.csv", keep_default_na=False)
    in_domain = pred[pred["part"] == "evaluation"]["in_domain"].astype(str).str.lower() == "true"
    assert int(in_domain.sum()) == gate["passed"]["n"]
    assert results[1]["gate"]["flagged"] == pytest.approx(gate["flagged"], abs=1.5 / n)  # the same weights
    assert "out-of-domain gate: flags" in capsys.readouterr().out


def test_the_gate_fit_is_reused_for_the_same_weights_and_refitted_when_they_change(tiny, tmp_path, monkeypatch):
    """A second evaluation of the same weights (another ``--split``) reuses the saved gate instead of scoring the
    training split again; new weights or another quantile refit it."""
    import shutil

    from brainmri.evaluate import domain
    from brainmri.runs import WEIGHTS_FILE, Run

    run = Run.load(shutil.copytree(tiny.dir, tmp_path / "runs" / "gated"))
    model = run.build_model()
    first = domain.fit_ood(run, model, "val", quantile=0.9, batch_size=16)
    assert json.loads((run.dir / domain.GATE_FIT_FILE).read_text())["quantile"] == 0.9

    def no_scoring(*args, **kwargs):
        raise AssertionError("the training split was scored again")

    monkeypatch.setattr(domain, "predict_outputs", no_scoring)
    again = domain.fit_ood(run, model, "val", quantile=0.9, batch_size=16)
    assert again.threshold_ == pytest.approx(first.threshold_)
    with pytest.raises(AssertionError, match="scored again"):
        domain.fit_ood(run, model, "val", quantile=0.8, batch_size=16)
    assert not (run.dir / domain.GATE_FIT_FILE).exists()  # the failed refit left no record claiming the old fit
    monkeypatch.undo()
    domain.fit_ood(run, model, "val", quantile=0.9, batch_size=16)
    with open(run.dir / WEIGHTS_FILE, "ab") as fh:  # other weights, same everything else
        fh.write(b" ")
    monkeypatch.setattr(domain, "predict_outputs", no_scoring)
    with pytest.raises(AssertionError, match="scored again"):
        domain.fit_ood(run, model, "val", quantile=0.9, batch_size=16)


def _bad_csv(tmp_path: Path, kind: str, tiny) -> Path:
    from external_support import phantom_csv_set

    csv = phantom_csv_set(tmp_path / "ext")
    df = pd.read_csv(csv, dtype=str)
    if kind == "missing column":
        df = df.drop(columns=["label"])
    elif kind == "unknown label":
        df.loc[3, "label"] = "astrocytoma"
    elif kind == "unreadable":
        (tmp_path / "ext" / "tumor" / "broken.png").write_text("not an image")
        df.loc[len(df)] = ["tumor/broken.png", "tumor", "P00"]
    elif kind == "too few":
        df = df.head(12)
    elif kind == "one class":
        df = df[df["label"] == "tumor"]
    elif kind == "inside training data":
        from brainmri.data.manifest import read_manifest

        split = tiny.split()
        m = read_manifest(split["manifest"])
        m = m[m["id"].isin(split["train"] + split["val"])]
        df = pd.DataFrame({"file": m["path"], "label": m["label"].replace({"glioma": "tumor"}), "patient": "X"})
    df.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing column", "missing column(s) label"),
        ("unknown label", "unknown label 'astrocytoma'"),
        ("unreadable", "broken.png"),
        ("too few", "only 12"),
        ("one class", "only tumour images"),
        ("inside training data", "already in the run's training data"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, kind, words):
    from brainmri.cli import main

    csv = _bad_csv(tmp_path, kind, tiny)
    out = tmp_path / "out"
    assert main(["validate", str(tiny.dir), str(csv), "--out", str(out), *FAST]) == 2
    err = _err(capsys).splitlines()[-1]  # the import may print a line per unreadable file before
    assert err.startswith("error: ") and "\n" not in err and words in err, err
    if kind in ("missing column", "unknown label", "too few", "one class"):
        assert str(csv) in err or csv.parent.name in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ real data


def test_lgg_flair_patient_subset(tiny, shared_data_dir, tmp_path, capsys):
    """A small patient subset of lgg-flair through the whole protocol: patient-disjoint parts, patient CIs."""
    from brainmri.cli import main

    root = shared_data_dir / "lgg-flair"
    if not (root / "labels.csv").is_file():
        pytest.skip("lgg-flair not present")
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    chosen = sorted(labels["patient"].unique())[:8]
    sub = labels[labels["patient"].isin(chosen)].copy()
    sub["file"] = [str(root / f) for f in sub["file"]]
    csv = tmp_path / "lgg-sub" / "labels.csv"
    csv.parent.mkdir()
    sub[["file", "label", "patient"]].to_csv(csv, index=False)
    out = tmp_path / "out"
    assert main(["validate", str(tiny.dir), str(csv), "--out", str(out), *FAST]) == 0, _err(capsys)
    res = json.loads((out / "external.json").read_text())
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    parts = pred.groupby("patient")["part"].nunique()
    assert (parts == 1).all() and pred["patient"].nunique() == 8
    assert res["counts"]["usable"] == len(sub) - res["counts"]["removed_overlap"]
    e = res["views"]["run_temperature"]["thresholds"]["target_sensitivity"]["evaluation"]
    assert e["patient_bootstrap"]["sensitivity"]["value"] == pytest.approx(e["sensitivity"]["value"])
