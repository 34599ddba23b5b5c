"""Training-time augmentation on preprocessed grayscale slices (float32 in [0, 1]).

Steps follow MONAI transforms: a deterministic transform (a class whose constructor takes every
parameter explicitly, e.g. ``Gamma(gamma=1.3)``) and a random wrapper (``RandGamma(prob)``) that draws
all of its parameters in one place, ``draw(shape, rng)``, from the ``numpy.random.Generator`` passed in,
and returns the deterministic transform (or ``None`` when it is skipped). The robustness benchmark
(``bench/robustness.py``) uses the deterministic classes with fixed parameters.

A site's own preprocessing, three groups and an occlusion, applied in this order by :class:`Augmenter`:

- site preprocessing, first (off by default): a skull-stripped export, re-cropped as ours would crop it;
- geometry: flip, rotation, zoom (scale), translation (a random crop/zoom);
- appearance randomisation (off by default; ``docs/robustness.md``): random monotone and non-monotone
  intensity curves (BigAug, Zhang et al. 2020), contrast inversion inside the head mask, a random
  shallow convolutional network (GIN, Ouyang et al. 2022), low-frequency Fourier amplitude mixing (FDA,
  Yang & Soatto 2020; FACT, Xu et al. 2021);
- scanner and protocol variation, after TorchIO (Pérez-García et al. 2021) and MONAI: bias field
  (exp of a random cubic polynomial), gamma, contrast/brightness, Gaussian blur, isotropic down-then-up
  sampling (a lower-resolution acquisition), anisotropic down-up sampling along one axis (slice
  thickness), Gaussian noise and Rician noise (magnitude images, Gudbjartsson & Patz 1995);
- occlusion, last: random erasing of one rectangle with noise (off by default).

Every random draw comes from the generator passed in, which the dataset seeds from (seed, epoch,
index): augmentation is reproducible and independent of worker count, so a resumed run sees the same
images as an uninterrupted one. A transform whose probability is 0 draws nothing, so the images of
the default configuration are bit-identical to those of the earlier single-function augmenter. Off at
evaluation (the dataset simply does not call it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from brainmri.config import AugmentConfig

# ----------------------------------------------------------------------------- deterministic transforms


class Transform:
    """A deterministic image -> image map on float32 (H, W) arrays; ``params()`` lists its parameters."""

    def __call__(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in vars(self).items() if not k.startswith("_")}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"array{v.shape}"
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Flip(Transform):
    """Left-right flip (``axis=1``) or up-down flip (``axis=0``)."""

    axis: int = 1

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img[:, ::-1] if self.axis == 1 else img[::-1]


@dataclass
class Affine(Transform):
    """Rotation by ``angle`` degrees and zoom by ``scale`` about the centre, then a shift of (tx, ty) pixels.

    Zero padding outside the image (the background of a preprocessed slice), bilinear interpolation.
    """

    angle: float = 0.0
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if not (self.angle or self.scale != 1.0 or self.tx or self.ty):
            return img
        h, w = img.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), self.angle, self.scale)
        m[:, 2] += (self.tx, self.ty)
        return cv2.warpAffine(
            np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )


@dataclass
class BiasField(Transform):
    """Multiplicative smooth field exp(sum c_ij x^i y^j), 1 <= i + j <= 3, x, y in [-1, 1] (TorchIO RandomBiasField).

    ``coefficients``: the 9 values c_ij in the order (i, j) = (0,1), (0,2), (0,3), (1,0), (1,1), (1,2),
    (2,0), (2,1), (3,0).
    """

    coefficients: np.ndarray = field(default_factory=lambda: np.zeros(9))

    def field(self, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        log_field = np.zeros((h, w), np.float32)
        k = 0
        for i in range(4):
            for j in range(4 - i):
                if i == j == 0:
                    continue
                log_field += float(self.coefficients[k]) * (x**i) * (y**j)
                k += 1
        return np.exp(log_field)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img * self.field(img.shape)


@dataclass
class Gamma(Transform):
    """x -> x ** gamma (MONAI/TorchIO RandomGamma; gamma > 1 darkens mid-grey, < 1 brightens)."""

    gamma: float = 1.0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return np.clip(img, 0, None) ** self.gamma


@dataclass
class ContrastBrightness(Transform):
    """x -> (x - mean(x)) * contrast + mean(x) + brightness."""

    contrast: float = 1.0
    brightness: float = 0.0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        out = img
        if self.contrast != 1.0:
            mean = float(out.mean())
            out = (out - mean) * self.contrast + mean
        if self.brightness:
            out = out + self.brightness
        return out


@dataclass
class GaussianBlur(Transform):
    """Gaussian smoothing with standard deviation ``sigma`` pixels (a softer reconstruction kernel)."""

    sigma: float = 1.0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (0, 0), sigmaX=self.sigma)


@dataclass
class Resample(Transform):
    """Down-sample by ``factor`` (area average) and up-sample back (bilinear): a coarser acquisition.

    ``axis=None``: both axes (lower in-plane resolution, TorchIO RandomAnisotropy in 2-D); ``axis=0``
    or ``1``: only along rows or columns (thick slices / a coarse phase-encoding direction seen in a
    reformatted plane).
    """

    factor: float = 2.0
    axis: int | None = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape
        sh = max(8, int(h / self.factor)) if self.axis in (None, 0) else h
        sw = max(8, int(w / self.factor)) if self.axis in (None, 1) else w
        small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _noise_field(noise: np.ndarray | None, sigma: float, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    if noise is not None:
        return noise
    return np.random.default_rng(seed).normal(0, sigma, shape).astype(np.float32)


@dataclass(eq=False)
class GaussianNoise(Transform):
    """Additive Gaussian noise N(0, sigma^2); the field is ``noise`` if given, else drawn from ``seed``."""

    sigma: float = 0.01
    seed: int = 0
    noise: np.ndarray | None = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img + _noise_field(self.noise, self.sigma, self.seed, img.shape)


@dataclass(eq=False)
class RicianNoise(Transform):
    """Rician noise of a magnitude image: sqrt((x + n1)^2 + n2^2), n1, n2 ~ N(0, sigma^2) (Gudbjartsson & Patz 1995).

    Unlike additive noise it lifts the dark background to a Rayleigh floor of mean sigma * sqrt(pi/2).
    """

    sigma: float = 0.02
    seed: int = 0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        n = np.random.default_rng(self.seed).standard_normal((2, *img.shape), dtype=np.float32)
        n *= np.float32(self.sigma)
        return np.sqrt((img + n[0]) ** 2 + n[1] ** 2)


@dataclass(eq=False)
class Erase(Transform):
    """Replace the rectangle rows ``top:top+height``, columns ``left:left+width`` with uniform noise in [0, 1].

    Random erasing (Zhong et al. 2020; timm's ``RandomErasing`` in ``pixel`` mode): a network that cannot
    count on every region being visible has to use more than one cue, e.g. the lesion as well as the
    level of the slice or the look of the skull base. Not timm's class itself: it draws from Python's global
    ``random``, which would break the (seed, epoch, index) reproducibility every transform here keeps.
    """

    top: int = 0
    left: int = 0
    height: int = 1
    width: int = 1
    seed: int = 0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        out = img.copy()
        fill = np.random.default_rng(self.seed).random((self.height, self.width), dtype=np.float32)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = fill
        return out


@dataclass(eq=False)
class StripSkull(Transform):
    """The slice as a site that skull-strips before export would send it, after our own crop and resize.

    Research exports (BraTS-style collections, atlas-registered volumes) and some PACS pipelines deliver
    brains without skull, scalp or orbits; the training set holds almost none. Steps: the preprocessing's
    own skull stripper (:class:`brainmri.preprocess.skull.SkullStrip`, zero outside the brain), then the
    ``crop`` preset's crop and resize again, because that is what our preprocessing does to such a slice:
    the crop closes in on the brain, which then fills the frame. A slice whose mask falls back to the head
    (stripping failed) is returned unchanged rather than half-stripped.
    """

    margin: float = 0.02

    def __call__(self, img: np.ndarray) -> np.ndarray:
        from brainmri.preprocess.base import Slice
        from brainmri.preprocess.crop import BrainCrop
        from brainmri.preprocess.resize import ResizePad
        from brainmri.preprocess.skull import SkullStrip

        if img.shape[0] != img.shape[1]:  # preprocessed slices are square; anything else is left alone
            return img
        stripped = SkullStrip(zero_outside=True)(Slice(np.ascontiguousarray(img, np.float32)))
        if stripped.info["skull"]["fallback"]:
            return img
        return ResizePad(img.shape[0])(BrainCrop(margin=self.margin)(Slice(stripped.image))).image


def _lut_curve(knots_y: np.ndarray, size: int = 1024) -> np.ndarray:
    """A smooth curve through (linspace(0, 1, K), knots_y), tabulated at ``size`` points in [0, 1].

    Piecewise-cubic Hermite (PCHIP, Fritsch & Carlson 1980): monotone knots give a monotone curve,
    and no curve overshoots its knots.
    """
    from scipy.interpolate import PchipInterpolator

    xs = np.linspace(0.0, 1.0, len(knots_y))
    return PchipInterpolator(xs, knots_y)(np.linspace(0.0, 1.0, size)).astype(np.float32)


@dataclass(eq=False)
class IntensityRemap(Transform):
    """x -> f(x), f a smooth curve through equally spaced knots ``(i / (K-1), knots[i])`` (values in [0, 1]).

    Increasing knots give a monotone remap (a different but order-preserving tissue contrast);
    unordered knots a non-monotone one, which reorders tissue intensities the way T1 -> T2 -> FLAIR do
    (BigAug, Zhang et al. 2020; the random curves of GIN, Ouyang et al. 2022; Models Genesis' Bézier
    remap). Applied through a 1024-entry look-up table.
    """

    knots: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 5))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        lut = _lut_curve(np.asarray(self.knots, np.float64))
        idx = np.clip(img * (len(lut) - 1) + 0.5, 0, len(lut) - 1).astype(np.int32)
        return lut[idx]


def head_mask(img: np.ndarray, threshold: float = 0.05, close_px: int = 7) -> np.ndarray:
    """Boolean mask of the head: pixels above ``threshold``, closed with a ``close_px`` disc, holes filled."""
    mask = (img > threshold).astype(np.uint8)
    if close_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    h, w = mask.shape
    flood = np.pad(mask, 1)  # background connected to the border; the rest is head (holes included)
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


@dataclass
class ContrastInversion(Transform):
    """Inside the head mask (see :func:`head_mask`) x -> max_mask(x) - x; the background stays as it is.

    Dark tissue becomes bright and vice versa (T1-like <-> T2-like ordering of CSF and white matter) while
    the image still looks like a head on a dark background. ``strength`` s < 1 blends:
    x -> (1 - s) x + s (max - x) (0.5: a flat head; the robustness benchmark's milder severities).
    """

    threshold: float = 0.05
    close_px: int = 7
    strength: float = 1.0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        mask = head_mask(img, self.threshold, self.close_px)
        if not mask.any():
            return img
        top = float(img[mask].max())
        inverted = top - img if self.strength == 1.0 else (1 - self.strength) * img + self.strength * (top - img)
        return np.where(mask, inverted, img).astype(np.float32)


def _low_band(shape: tuple[int, int], beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of the lowest frequencies (|f| <= beta x size per axis) in an rfft2 spectrum."""
    h, w = shape
    bh, bw = max(1, int(beta * h)), max(1, int(beta * w))
    rows = np.r_[0:bh, h - bh + 1 : h] if bh > 1 else np.r_[0:1]
    return np.ix_(rows, np.arange(min(bw, w // 2 + 1)))


def low_band_amplitude(img: np.ndarray, beta: float = 0.1) -> np.ndarray:
    """The amplitude ``|rfft2(img)|`` on the low-frequency band that :func:`fourier_amplitude_mix` swaps."""
    from scipy import fft

    return np.abs(fft.rfft2(np.asarray(img, np.float32))[_low_band(img.shape, beta)])


def fourier_amplitude_mix(img: np.ndarray, other_band: np.ndarray, beta: float = 0.1, lam: float = 1.0) -> np.ndarray:
    """Mix the low-frequency amplitude of ``img`` with ``other_band`` and keep the phase everywhere.

    ``other_band`` is :func:`low_band_amplitude` of another image of the same shape (FDA, Yang & Soatto
    2020; FACT's amplitude mix, Xu et al. 2021): the low-frequency amplitude carries the global "style"
    (contrast, shading), the phase the anatomy. ``beta``: half-width of the band as a fraction of the
    image size; ``lam``: 1 swaps, 0 keeps.
    """
    from scipy import fft

    spec = fft.rfft2(np.asarray(img, np.float32))
    band = _low_band(img.shape, beta)
    amp = np.abs(spec[band])
    target = (1 - lam) * amp + lam * other_band
    spec[band] *= (target / np.maximum(amp, 1e-8)).astype(np.float32)
    return fft.irfft2(spec, s=img.shape).astype(np.float32)


@dataclass(eq=False)
class FourierAmplitudeMix(Transform):
    """Low-frequency amplitude mixing (see :func:`fourier_amplitude_mix`).

    The other amplitude is that of ``other`` (an image, e.g. another training slice) if given, else
    this image's own amplitude multiplied by exp(N(0, jitter^2)) per frequency except the mean (DC)
    term, drawn from ``seed`` (a generated style; FACT's amplitude perturbation). ``keep_background``:
    pixels outside the head mask (:func:`head_mask`) keep their value, so the ringing the swap causes
    there does not paint a texture on the air around the head.
    """

    beta: float = 0.1
    lam: float = 1.0
    other: np.ndarray | None = None
    jitter: float = 0.3
    seed: int = 0
    keep_background: bool = True

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.other is not None:
            other = low_band_amplitude(self.other, self.beta)
        else:
            own = low_band_amplitude(img, self.beta)
            gain = np.exp(np.random.default_rng(self.seed).normal(0, self.jitter, own.shape))
            gain[0, 0] = 1.0
            other = own * gain
        out = fourier_amplitude_mix(img, other, self.beta, self.lam)
        return np.where(head_mask(img), out, img) if self.keep_background else out


@dataclass(eq=False)
class RandomConvNet(Transform):
    """GIN: the slice through a shallow random convolutional network, blended with the original.

    Global Intensity Non-linear augmentation (Ouyang et al. 2022, "Causality-inspired single-source domain
    generalization for medical image segmentation"): ``layers`` convolutions of ``hidden`` channels with
    1x1 or 3x3 kernels, weights and biases N(0, 1), LeakyReLU(0.2) between them, drawn from ``seed``.
    Unlike a pointwise intensity curve the output depends on the neighbourhood too, so edges, textures and
    the tissue ordering all change while shapes stay: a cheap stand-in for another sequence. The result
    is blended with the input (``alpha``: 1 = all network), rescaled inside the head mask to the
    input's 1st..99th percentile range, and the background stays black.
    """

    alpha: float = 1.0
    layers: int = 4
    hidden: int = 2
    seed: int = 0

    def _network(self, img: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        channels = [img]
        for layer in range(self.layers):
            n_out = 1 if layer == self.layers - 1 else self.hidden
            k = int(rng.choice([1, 3]))
            weights = rng.normal(0, 1, (n_out, len(channels), k, k)).astype(np.float32)
            bias = rng.normal(0, 1, n_out).astype(np.float32)
            out = []
            for o in range(n_out):
                acc = np.full(img.shape, bias[o], np.float32)
                for i, ch in enumerate(channels):
                    acc += cv2.filter2D(ch, -1, weights[o, i], borderType=cv2.BORDER_REFLECT)
                out.append(acc if layer == self.layers - 1 else np.where(acc > 0, acc, 0.2 * acc))
            channels = out
        return channels[0]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        mask = head_mask(img)
        if mask.sum() < 16:
            return img
        net = self._network(np.ascontiguousarray(img, np.float32))
        lo, hi = np.percentile(net[mask], [1, 99])
        net = (net - lo) / max(hi - lo, 1e-6)
        ilo, ihi = np.percentile(img[mask], [1, 99])
        net = ilo + net * (ihi - ilo)
        out = self.alpha * net + (1 - self.alpha) * img
        return np.where(mask, np.clip(out, 0, 1), img).astype(np.float32)


# ----------------------------------------------------------------------------- random wrappers


class RandomTransform:
    """Draws the parameters of one deterministic transform; ``prob`` is the chance it is applied."""

    name: ClassVar[str] = ""

    def __init__(self, prob: float = 1.0) -> None:
        self.prob = float(prob)

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> Transform | None:
        """The transform to apply, or None. Draws nothing when ``prob`` is 0."""
        if not self.prob or rng.random() >= self.prob:
            return None
        return self.sample(shape, rng)

    def sample(self, shape: tuple[int, int], rng: np.random.Generator) -> Transform:
        raise NotImplementedError

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        t = self.draw(img.shape, rng)
        return img if t is None else t(img)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, np.ndarray)}


class RandFlip(RandomTransform):
    """Left-right flip with probability ``prob`` (always draws one number, as the earlier augmenter did)."""

    name = "flip"

    def draw(self, shape, rng):
        return Flip(1) if rng.random() < self.prob else None


class RandAffine(RandomTransform):
    """Rotation U(-rotation_deg, rotation_deg), zoom U(scale), shift U(-translate, translate) x size; always on."""

    name = "affine"

    def __init__(self, rotation_deg: float, scale: tuple[float, float], translate: float) -> None:
        super().__init__(1.0)
        self.rotation_deg, self.scale, self.translate = rotation_deg, tuple(scale), translate

    def draw(self, shape, rng):
        h, w = shape
        angle = rng.uniform(-self.rotation_deg, self.rotation_deg) if self.rotation_deg else 0.0
        scale = rng.uniform(*self.scale)
        tx, ty = (rng.uniform(-self.translate, self.translate, size=2) * (w, h)) if self.translate else (0.0, 0.0)
        return Affine(angle, scale, tx, ty)


class RandBiasField(RandomTransform):
    """Bias field with every coefficient U(-coefficient, coefficient)."""

    name = "bias_field"

    def __init__(self, prob: float, coefficient: float = 0.4) -> None:
        super().__init__(prob)
        self.coefficient = coefficient

    def sample(self, shape, rng):
        return BiasField(rng.uniform(-self.coefficient, self.coefficient, size=9))


class RandGamma(RandomTransform):
    """Gamma exp(U(-log_gamma, log_gamma))."""

    name = "gamma"

    def __init__(self, prob: float, log_gamma: float = 0.3) -> None:
        super().__init__(prob)
        self.log_gamma = log_gamma

    def sample(self, shape, rng):
        return Gamma(np.exp(rng.uniform(-self.log_gamma, self.log_gamma)))  # float64, as before


class RandContrastBrightness(RandomTransform):
    """Contrast factor U(1 - contrast, 1 + contrast), brightness U(-brightness, brightness); always on."""

    name = "contrast_brightness"

    def __init__(self, contrast: float, brightness: float) -> None:
        super().__init__(1.0)
        self.contrast, self.brightness = contrast, brightness

    def draw(self, shape, rng):
        c = rng.uniform(1 - self.contrast, 1 + self.contrast) if self.contrast else 1.0
        b = rng.uniform(-self.brightness, self.brightness) if self.brightness else 0.0
        return ContrastBrightness(c, b)


class RandBlur(RandomTransform):
    """Gaussian blur, sigma U(sigma_range)."""

    name = "blur"

    def __init__(self, prob: float, sigma_range: tuple[float, float] = (0.3, 1.2)) -> None:
        super().__init__(prob)
        self.sigma_range = tuple(sigma_range)

    def sample(self, shape, rng):
        return GaussianBlur(rng.uniform(*self.sigma_range))


class RandResample(RandomTransform):
    """Down-up sampling by U(factor_range); ``axis=None`` both axes, ``"random"`` one axis drawn at random."""

    def __init__(self, prob: float, factor_range: tuple[float, float], axis: str | None = None) -> None:
        super().__init__(prob)
        self.factor_range, self.axis = tuple(factor_range), axis

    @property
    def name(self) -> str:  # type: ignore[override]
        return "downsample" if self.axis is None else "thickness"

    def sample(self, shape, rng):
        factor = rng.uniform(*self.factor_range)
        axis = None if self.axis is None else int(rng.integers(2))
        return Resample(factor, axis)


class RandGaussianNoise(RandomTransform):
    """Additive Gaussian noise, sigma U(sigma_range)."""

    name = "noise"

    def __init__(self, prob: float, sigma_range: tuple[float, float] = (0.005, 0.03)) -> None:
        super().__init__(prob)
        self.sigma_range = tuple(sigma_range)

    def sample(self, shape, rng):
        sigma = rng.uniform(*self.sigma_range)
        return GaussianNoise(sigma, noise=rng.normal(0, sigma, shape).astype(np.float32))


class RandRicianNoise(RandomTransform):
    """Rician noise, sigma U(sigma_range)."""

    name = "rician_noise"

    def __init__(self, prob: float, sigma_range: tuple[float, float] = (0.01, 0.06)) -> None:
        super().__init__(prob)
        self.sigma_range = tuple(sigma_range)

    def sample(self, shape, rng):
        return RicianNoise(rng.uniform(*self.sigma_range), int(rng.integers(2**31)))


class RandErase(RandomTransform):
    """One erased rectangle: area U(area) of the image, aspect ratio log-uniform in ``aspect`` (timm's defaults)."""

    name = "random_erasing"

    def __init__(
        self, prob: float, area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 3.3)
    ) -> None:
        super().__init__(prob)
        self.area, self.aspect = tuple(area), tuple(aspect)

    def sample(self, shape, rng):
        h, w = shape
        target = rng.uniform(*self.area) * h * w
        ratio = float(np.exp(rng.uniform(np.log(self.aspect[0]), np.log(self.aspect[1]))))
        eh = int(np.clip(round(np.sqrt(target * ratio)), 1, h))
        ew = int(np.clip(round(np.sqrt(target / ratio)), 1, w))
        top, left = int(rng.integers(h - eh + 1)), int(rng.integers(w - ew + 1))
        return Erase(top, left, eh, ew, int(rng.integers(2**31)))


class RandStripSkull(RandomTransform):
    """:class:`StripSkull` (no random parameter besides whether it happens)."""

    name = "skull_strip"

    def sample(self, shape, rng):
        return StripSkull()


class RandIntensityRemap(RandomTransform):
    """Random curve through ``knots`` equally spaced knots; monotone with probability ``monotone``.

    The first knot stays 0 (the background stays black). Monotone: the other knots are sorted U(0, 1)
    values with the last one set to U(0.7, 1); non-monotone: independent U(0, 1) values.
    """

    name = "intensity_remap"

    def __init__(self, prob: float, knots: int = 5, monotone: float = 0.5) -> None:
        super().__init__(prob)
        self.knots, self.monotone = int(knots), float(monotone)

    def sample(self, shape, rng):
        inner = rng.uniform(0, 1, self.knots - 1)
        if rng.random() < self.monotone:
            inner = np.sort(inner)
            inner[-1] = max(inner[-1], 0.7 + 0.3 * inner[-1])
        return IntensityRemap(np.r_[0.0, inner])


class RandRandomConvNet(RandomTransform):
    """GIN (:class:`RandomConvNet`): a new random network per image, blend ``alpha`` ~ U(0.5, 1)."""

    name = "random_conv"

    def sample(self, shape, rng):
        return RandomConvNet(alpha=float(rng.uniform(0.5, 1.0)), seed=int(rng.integers(2**31)))


class RandContrastInversion(RandomTransform):
    """Contrast inversion inside the head mask (no random parameter besides whether it happens)."""

    name = "invert"

    def __init__(self, prob: float, threshold: float = 0.05) -> None:
        super().__init__(prob)
        self.threshold = threshold

    def sample(self, shape, rng):
        return ContrastInversion(self.threshold)


class RandFourierAmplitudeMix(RandomTransform):
    """Low-frequency amplitude mix, lam U(0.5, 1), with a random image of ``bank`` or a generated amplitude.

    ``bank``: uint8 (N, H, W) images of the same size (the training split); the partner is drawn from
    the same generator, so the result stays a function of (seed, epoch, index). Without a bank the
    partner amplitude is this image's own, jittered (see :class:`FourierAmplitudeMix`).
    """

    name = "fourier_mix"

    def __init__(self, prob: float, beta: float = 0.1, bank: np.ndarray | None = None) -> None:
        super().__init__(prob)
        self.beta = beta
        self._bank = bank

    def sample(self, shape, rng):
        lam = rng.uniform(0.5, 1.0)
        if self._bank is not None and len(self._bank) and self._bank.shape[1:] == tuple(shape):
            other = self._bank[int(rng.integers(len(self._bank)))].astype(np.float32) / 255.0
            return FourierAmplitudeMix(self.beta, lam, other=other)
        return FourierAmplitudeMix(self.beta, lam, jitter=0.3, seed=int(rng.integers(2**31)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "partner": "bank" if self._bank is not None else "jittered own amplitude"}


# ----------------------------------------------------------------------------- composition

#: Probabilities the ``appearance: true`` preset gives every appearance key still at its default (0),
#: and the bias-field coefficient it uses when ``bias_coefficient`` is still at its default.
APPEARANCE_PRESET: dict[str, float] = {
    "intensity_remap": 0.5,
    "invert": 0.2,
    "fourier_mix": 0.3,
    "rician_noise": 0.2,
    "thickness": 0.15,
}
APPEARANCE_BIAS_COEFFICIENT = 0.6


def effective_config(cfg: AugmentConfig) -> AugmentConfig:
    """``cfg`` with the ``appearance`` preset filled in (explicit non-zero values win)."""
    if not cfg.appearance:
        return cfg
    update: dict[str, Any] = {k: v for k, v in APPEARANCE_PRESET.items() if not getattr(cfg, k)}
    if cfg.bias_coefficient == AugmentConfig.model_fields["bias_coefficient"].default:
        update["bias_coefficient"] = APPEARANCE_BIAS_COEFFICIENT
    return cfg.model_copy(update=update)


def build_transforms(cfg: AugmentConfig, bank: np.ndarray | None = None) -> list[RandomTransform]:
    """The random transforms of ``cfg`` in application order (geometry, appearance, scanner variation)."""
    c = effective_config(cfg)
    return [
        RandStripSkull(c.skull_strip),
        RandFlip(c.hflip),
        RandAffine(c.rotation_deg, c.scale, c.translate),
        RandIntensityRemap(c.intensity_remap, c.remap_knots, c.remap_monotone),
        RandContrastInversion(c.invert),
        RandRandomConvNet(c.random_conv),
        RandFourierAmplitudeMix(c.fourier_mix, c.fourier_beta, bank),
        RandBiasField(c.bias_field, c.bias_coefficient),
        RandGamma(c.gamma),
        RandContrastBrightness(c.contrast, c.brightness),
        RandBlur(c.blur),
        RandResample(c.downsample, (1.5, 3.0)),
        RandResample(c.thickness, (2.0, 5.0), axis="random"),
        RandGaussianNoise(c.noise),
        RandRicianNoise(c.rician_noise),
        RandErase(c.random_erasing),
    ]


class Augmenter:
    """Applies the configured augmentations; each scanner-variation or appearance value is a probability.

    ``bank`` (optional): uint8 training images that Fourier amplitude mixing draws its partner from; the
    trainer passes its training array (``Augmenter(cfg.train.augment, bank=train_images)``), so a slice
    takes the low-frequency appearance of another scan while keeping its own anatomy.
    """

    def __init__(self, cfg: AugmentConfig, bank: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.transforms = build_transforms(cfg, bank)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.enabled:
            return img
        out = img.astype(np.float32, copy=True)
        for t in self.transforms:
            out = t(out, rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """The active transforms in order with their settings (for the training log)."""
        if not self.cfg.enabled:
            return {}
        return {t.name: t.describe() for t in self.transforms if t.prob}


def random_bias_field(shape: tuple[int, int], rng: np.random.Generator, coefficient: float = 0.4) -> np.ndarray:
    """Multiplicative field exp(sum c_ij x^i y^j), i + j <= 3, c ~ U(-coefficient, coefficient)."""
    return BiasField(rng.uniform(-coefficient, coefficient, size=9)).field(shape)
