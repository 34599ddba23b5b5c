"""Grad-CAM: maps of a tiny CNN trained on phantoms peak inside the lesion; overlay and gallery contract."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from brainmri.data.phantoms import make_phantom  # noqa: E402
from brainmri.models.cam import compute_cams, overlay, peak_location  # noqa: E402
from brainmri.models.classifier import BrainClassifier  # noqa: E402

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SIZE = 48


class TinyCNN(nn.Module):
    """Three conv layers, global average pooling, linear head (stride 4: a 12x12 map at 48 px)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def phantoms(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels, masks = [], [], []
    for i in range(n):
        label = CLASSES[i % 4]
        ph = make_phantom(label, size=SIZE, seed=seed + i)
        images.append(np.round(ph.image * 255).astype(np.uint8))
        labels.append(int(label != "no_tumor"))
        masks.append(ph.lesion_mask)
    return np.stack(images), np.array(labels), np.stack(masks)


@pytest.fixture(scope="module")
def trained() -> BrainClassifier:
    """Tumour vs no tumour, ~1 s of training on 160 phantoms."""
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster than two fighting on a shared machine
    images, labels, _ = phantoms(160, seed=0)
    model = BrainClassifier(TinyCNN(2), (0.5,) * 3, (0.5,) * 3)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 32):
            i = perm[s : s + 32]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_peaks_inside_lesion(trained: BrainClassifier, method: str) -> None:
    images, labels, masks = phantoms(60, seed=10_000)
    tumour = labels == 1
    cams = compute_cams(trained, images[tumour], targets=np.ones(tumour.sum(), int), method=method)
    assert cams.shape == images[tumour].shape and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    inside = np.array([m[peak_location(c)] for c, m in zip(cams, masks[tumour], strict=True)])
    # lesions cover ~2.5% of the slice, so chance would be ~0.03
    assert inside.mean() > 0.5, f"peak inside the lesion for only {inside.mean():.0%} of tumour phantoms"
    mean_in = np.mean([c[m].mean() for c, m in zip(cams, masks[tumour], strict=True)])
    mean_out = np.mean([c[~m].mean() for c, m in zip(cams, masks[tumour], strict=True)])
    assert mean_in > 2 * mean_out


def test_compute_cams_contract(trained: BrainClassifier) -> None:
    images, _, _ = phantoms(3, seed=5)
    one = compute_cams(trained, images[0])  # a single (S, S) image is a batch of one
    assert one.shape == (1, SIZE, SIZE)
    both = compute_cams(trained, images, targets=[0, 1, 1], batch_size=2)
    assert both.shape == (3, SIZE, SIZE)
    assert not trained.training  # eval mode kept
    assert all(p.grad is None for p in trained.parameters())  # no gradients left behind
    with pytest.raises(ValueError, match="targets"):
        compute_cams(trained, images, targets=[0])
    with pytest.raises(ValueError, match="uint8"):
        compute_cams(trained, images.astype(np.float32))
    with pytest.raises(ValueError, match="method"):
        compute_cams(trained, images, method="scorecam")


def test_overlay() -> None:
    img = np.full((32, 32), 100, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[0, 0] = 1.0
    rgb = overlay(img, cam)  # map of another size is resized
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] > rgb[0, 0, 2]  # hot = red
    assert rgb[31, 31, 2] > rgb[31, 31, 0]  # cold = blue
    np.testing.assert_array_equal(overlay(img, cam, alpha=0.0), np.repeat(img[..., None], 3, 2))


def test_error_gallery_png(tmp_path, trained: BrainClassifier) -> None:
    from PIL import Image

    from brainmri.evaluate.gallery import error_gallery, select_errors

    images, labels, _ = phantoms(8, seed=7)
    preds = 1 - labels
    preds[:2] = labels[:2]
    conf = np.linspace(0.5, 0.9, 8)
    chosen = select_errors(labels, preds, conf, max_items=4)
    assert len(chosen) == 4 and list(conf[chosen]) == sorted(conf[chosen], reverse=True)
    cams = compute_cams(trained, images[chosen], targets=preds[chosen])
    out = error_gallery(images[chosen], cams, [f"#{i}" for i in chosen], tmp_path / "g.png", title="t")
    assert Image.open(out).size[0] > 100
    empty = error_gallery(images[:0], cams[:0], [], tmp_path / "none.png")
    assert empty.is_file()
