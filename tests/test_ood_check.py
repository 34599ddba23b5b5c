"""bench/ood_check.py: the non-MRI image sets that pip packages ship or that are generated."""

from __future__ import annotations

import numpy as np
import pytest

from bench_support import load_bench


def test_skimage_photos_come_in_colour_and_all_in_grayscale():
    pytest.importorskip("skimage")
    bench = load_bench("ood_check")
    colour, grey = bench.skimage_photos()
    assert len(grey) == len(bench.SKIMAGE_PHOTOS) and 0 < len(colour) < len(grey)
    assert all(img.ndim == 3 and img.shape[2] == 3 for _, img in colour)
    for name, img in grey:
        assert img.ndim == 2 and img.min() >= 0 and img.max() <= 255 and img.std() > 5, name


def test_ct_phantoms_are_head_shaped_with_reconstruction_streaks():
    pytest.importorskip("skimage")
    bench = load_bench("ood_check")
    phantoms = bench.ct_phantoms()
    assert len(phantoms) == 7
    clean = phantoms[0][1]
    assert clean.shape == (256, 256) and clean.max() == pytest.approx(255)
    corners = np.r_[clean[:20, :20].ravel(), clean[-20:, -20:].ravel()]
    assert corners.max() == 0  # dark background, a bright skull ring: the look of a head slice
    streaky = dict(phantoms)["FBP 30 projections, noise 0.0"]
    assert np.abs(streaky - clean).mean() > 1  # few projections: visible streaks


def test_chest_radiographs_look_like_a_frontal_chest_film():
    bench = load_bench("ood_check")
    images = bench.chest_radiographs(n=4, size=128, seed=3)
    assert len(images) == 4 and len({name for name, _ in images}) == 4
    for name, img in images:
        assert img.shape == (128, 128) and img.min() >= 0 and img.max() == pytest.approx(255), name
        assert img[:5, :10].mean() < 20 and img[:5, -10:].mean() < 20  # air above the shoulders stays black
        lung = img[50:80, 30:40].mean()  # left lung field, between ribs and heart
        spine = img[50:80, 62:66].mean()
        assert spine > lung + 20, name  # bone white, air-filled lung dark: a radiograph's contrast
    again = bench.chest_radiographs(n=4, size=128, seed=3)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(images, again, strict=True))


@pytest.mark.parametrize("which", ["PYDICOM_OTHER_MODALITIES", "PYDICOM_OTHER_MRI"])
def test_pydicom_clinical_images_are_read_by_the_deployed_reader(which):
    """Every real clinical file the benchmark sends is a readable, usable picture (an unreadable one would be
    an error row, not a flag) of the modality it is listed under."""
    import pydicom

    from brainmri.io import read_image

    bench = load_bench("ood_check")
    table = getattr(bench, which)
    paths, names = bench.pydicom_files(table)
    assert len(paths) == len(names) == len(table)
    wanted = {"MR"} if which == "PYDICOM_OTHER_MRI" else {"CT", "NM", "US"}
    for path in paths:
        assert pydicom.dcmread(path, stop_before_pixels=True).Modality in wanted, path
        image = read_image(path)
        assert min(image.array.shape) >= 16 and np.ptp(image.array) > 0, path
