"""Site head (``brainmri adapt BUNDLE``, ``adapt.method=head``): the offset fit, its write into the network, and a
bundle adapted end to end that validates on patients it was not fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from brainmri.errors import DataError
from brainmri.train.site_head import (
    SiteHead,
    apply_site_head,
    calibrated_log_odds,
    fit_site_head,
    holdout_scores,
)

pytest.importorskip("brainmri.preprocess.cache")


def test_calibrated_log_odds_is_tumour_versus_no_tumour_of_the_tempered_softmax():
    z = np.random.default_rng(0).normal(size=(20, 4)) * 3
    p = softmax(z / 0.7, axis=1)
    o = calibrated_log_odds(z, 0.7, no_tumor=2)
    assert np.allclose(expit(o), 1.0 - p[:, 2], atol=1e-9)


def _site(n_patients: int = 30, per: int = 10, seed: int = 0):
    """Features where one direction carries the site's lesions, and a source offset that ignores it."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per)
    y = rng.integers(0, 2, size=len(groups))
    f = rng.normal(size=(len(groups), 16))
    f[:, 3] += 2.0 * y
    offset = rng.normal(size=len(groups))  # the source model: no idea
    return f, offset, y, groups


def test_fit_site_head_learns_the_site_direction_and_picks_c_by_grouped_cv():
    f, off, y, g = _site()
    head = fit_site_head(f, off, y, g, c_grid=(0.001, 0.1, 10.0), folds=3)
    assert set(head.cv) == {"0.001", "0.1", "10.0"} and head.c in (0.001, 0.1, 10.0)
    assert head.cv[str(head.c)] == min(head.cv.values())
    assert int(np.argmax(np.abs(head.w))) == 3 and head.w[3] > 0
    ft, ot, yt, _ = _site(seed=1)  # other patients
    before, after = holdout_scores(ot, yt), holdout_scores(ot + head.correction(ft), yt)
    assert after["holdout_auc"] > 0.85 > 0.65 > before["holdout_auc"]
    assert after["holdout_bce"] < before["holdout_bce"]


def test_fit_site_head_refuses_one_class():
    f, off, _, g = _site()
    with pytest.raises(DataError, match="one class"):
        fit_site_head(f, off, np.ones(len(g)), g)


def _tiny_model():
    from brainmri.config import ModelConfig
    from brainmri.models import create_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="none")
    return create_model(cfg, 4).eval()


def test_apply_site_head_adds_the_correction_and_keeps_features_and_types():
    model = _tiny_model()
    x = torch.rand(5, 1, 64, 64)
    with torch.inference_mode():
        f0 = model.forward_features(x).numpy()
        z0 = model(x).numpy()
    rng = np.random.default_rng(0)
    head = SiteHead(w=rng.normal(size=f0.shape[1]) * 0.1, b=0.3, c=1.0)
    t, no = 0.8, 2
    apply_site_head(model, head, t, no)
    with torch.inference_mode():
        f1 = model.forward_features(x).numpy()
        z1 = model(x).numpy()
    assert np.allclose(f0, f1)  # features unchanged: the out-of-domain gate stays valid
    o0, o1 = calibrated_log_odds(z0, t, no), calibrated_log_odds(z1, 1.0, no)
    assert np.allclose(o1, o0 + head.correction(f0), atol=1e-4)  # temperature folded in, correction added
    types0 = softmax(np.delete(z0 / t, no, axis=1), axis=1)
    types1 = softmax(np.delete(z1, no, axis=1), axis=1)
    assert np.allclose(types0, types1, atol=1e-5)  # p(type | tumour) is the source's


def test_adapt_a_bundle_writes_a_verified_bundle_that_validates(tmp_path, capsys):
    from brainmri.bundle import Bundle, export_bundle
    from brainmri.cli import main
    from brainmri.infer import Predictor
    from external_support import phantom_csv_set, tiny_run

    run = tiny_run(tmp_path)
    assert main(["evaluate", str(run.dir), "--set", "evaluate.bootstrap=20", "--set", "evaluate.gallery_max=0"]) == 0
    source = export_bundle(run.dir, tmp_path / "bundle")
    csv = phantom_csv_set(tmp_path / "ext", n_patients=12)
    out = tmp_path / "bundle-site"
    fast = ["--set", "external.min_images=30", "--set", "paths.work_dir=" + str(tmp_path / "work")]
    rc = main(["adapt", str(source), "--external", str(csv), "--out", str(out), *fast])
    assert rc == 0, capsys.readouterr().err
    assert "adapted bundle" in capsys.readouterr().out

    new, old = Bundle.load(out), Bundle.load(source)
    card = new.card
    adapt = card["adaptation"]
    assert adapt["method"] == "head" and adapt["source_bundle"] == "bundle"
    assert set(adapt["cv_log_loss_anchor"]) == {"0.001", "0.003", "0.01", "0.03", "0.1"}  # the gate gave stand-ins
    assert adapt["source_card_sha256"] == old.card_sha256 and adapt["source_metrics"] == old.card["metrics"]
    assert card["metrics"] is None and card["ood"] == old.card["ood"]  # same features: the gate carries over
    assert card["calibration"]["temperature"] == 1.0 and card["calibration"]["conformal"] == {}
    assert 0.0 < card["calibration"]["threshold"] <= 0.5
    readme = (out / "README.md").read_text()
    assert "## Site adaptation" in readme and "source's evaluation no longer applies" in readme
    split_file = adapt["external"]["split_file"]
    assert split_file.startswith(str(tmp_path / "work" / "external"))  # beside the imported set, not in the bundle
    split = json.loads(Path(split_file).read_text())
    assert adapt["external"]["n_train"] == len(split["adapt_train"]) and not set(split["adapt_train"]) & set(
        split["adapt_holdout"]
    )

    images = run.load_images("test").images[:6]
    p_old, p_new = Predictor(old).predict_images(images), Predictor(new).predict_images(images)
    assert [p.ood_score for p in p_old] == pytest.approx([p.ood_score for p in p_new], rel=1e-4)
    assert p_new[0].conformal_set is None and p_new[0].threshold == card["calibration"]["threshold"]

    vout = tmp_path / "val"
    args = ["validate", str(out), str(csv), "--out", str(vout), "--split-file", split_file]
    assert main([*args, "--set", "external.bootstrap=20"]) == 0, capsys.readouterr().err
    counts = json.loads((vout / "external.json").read_text())["counts"]
    assert counts["calibration_trained_on"] == len(split["adapt_train"])  # thresholds only from held-out ids


def test_a_bundle_cannot_be_fine_tuned(tmp_path, capsys):
    from brainmri.bundle import export_bundle
    from brainmri.cli import main
    from external_support import phantom_csv_set, tiny_run

    bundle = export_bundle(tiny_run(tmp_path).dir, tmp_path / "bundle")
    csv = phantom_csv_set(tmp_path / "ext", n_patients=12)
    rc = main(["adapt", str(bundle), "--external", str(csv), "--method", "finetune"])
    assert rc != 0
    assert "adapt.method=head" in capsys.readouterr().err


def test_the_anchor_keeps_the_correction_small_on_source_stand_ins_at_little_site_cost():
    """Site slices carry the lesion on feature 3 and a site-only cue on feature 5; the source images lie far out
    on feature 5. The free head leans on both and moves every source answer; the anchored one keeps feature 3."""
    f, off, y, g = _site()
    f[:, 5] += 1.0 * y
    source = np.random.default_rng(7).normal(size=(500, 16))
    source[:, 5] += 4.0
    free = fit_site_head(f, off, y, g, c_grid=(0.1,), folds=3)
    held = fit_site_head(f, off, y, g, c_grid=(0.1,), folds=3, anchors=source, anchor_grid=(0.01, 0.1, 1.0, 10.0))
    assert free.anchor == 0.0 and free.cv == {}  # one C, no anchor: nothing to choose, no cross-validation
    assert set(held.cv_anchor) == {"0.01", "0.1", "1.0", "10.0"}
    assert held.anchor > 0.0  # the largest weight within 5% of the free head's cross-validated loss
    assert held.cv_anchor[str(held.anchor)] <= 1.05 * held.cv["0.1"]
    assert all(v > 1.05 * held.cv["0.1"] for a, v in held.cv_anchor.items() if float(a) > held.anchor)
    assert np.mean(held.correction(source) ** 2) < 0.5 * np.mean(free.correction(source) ** 2)
    ft, ot, yt, _ = _site(seed=1)
    assert holdout_scores(ot + held.correction(ft), yt)["holdout_auc"] > 0.85


def test_bench_anchor_scores_fit_on_one_half_and_measure_on_the_other():
    """``bench/site_head_anchor.py``: a zero correction reproduces the offsets' AUC and the source argmax accuracy;
    each half is scored by a head that never saw it."""
    from bench_support import load_bench

    bench = load_bench("site_head_anchor")
    f, off, y, _ = _site()
    halves = np.arange(len(y)) % 2
    logits = np.random.default_rng(2).normal(size=(40, 4))
    labels = logits.argmax(1)
    labels[:10] = (labels[:10] + 1) % 4
    seen: list[int] = []

    def zero_head(ff, oo, yy):
        seen.append(len(yy))
        return SiteHead(w=np.zeros(f.shape[1]), b=0.0, c=1.0)

    out = bench.scores((f, off, y, halves), (logits, np.zeros((40, 16)), labels), zero_head, 1.0, 2)
    from sklearn.metrics import roc_auc_score

    expected = np.mean([roc_auc_score(y[halves == h], off[halves == h]) for h in (0, 1)])
    assert out["site_auc"] == pytest.approx(expected) and out["source_accuracy"] == pytest.approx(0.75)
    assert seen == [int((halves == 1).sum()), int((halves == 0).sum())]


def test_a_single_accepted_anchor_weight_is_fitted_without_cross_validation():
    f, off, y, g = _site()
    source = np.random.default_rng(7).normal(size=(200, 16))
    head = fit_site_head(f, off, y, g, c_grid=(0.1,), anchors=source, anchor_grid=(0.3,), anchor_tolerance=np.inf)
    assert head.anchor == 0.3 and head.cv == {} and head.cv_anchor == {}
    free = fit_site_head(f, off, y, g, c_grid=(0.1,))
    assert np.mean(head.correction(source) ** 2) < np.mean(free.correction(source) ** 2)
