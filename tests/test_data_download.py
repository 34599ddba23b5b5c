"""Download: offline/unauthenticated failures are one clear line; success prints the local path."""

from __future__ import annotations

import time

import pytest

from brainmri.cli import main
from brainmri.data.download import download_dataset
from brainmri.errors import DataError

kagglehub = pytest.importorskip("kagglehub")


def test_offline_download_fails_fast_with_one_line(monkeypatch, capsys):
    calls = []

    def unreachable(handle, **kwargs):
        calls.append(handle)
        raise ConnectionError(
            "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded\n"
            "(Caused by NameResolutionError)"
        )

    monkeypatch.setattr(kagglehub, "dataset_download", unreachable)
    start = time.monotonic()
    rc = main(["data", "download", "--dataset", "navoneel/brain-mri-images-for-brain-tumor-detection"])
    err = capsys.readouterr().err
    assert time.monotonic() - start < 10
    assert rc == 2
    assert calls == ["navoneel/brain-mri-images-for-brain-tumor-detection"]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: cannot download 'navoneel/brain-mri-images-for-brain-tumor-detection'")
    assert "ConnectionError" in lines[0] and "brainmri data import" in lines[0]


def test_unauthenticated_is_clear(monkeypatch):
    class UnauthenticatedError(Exception):
        pass

    def denied(handle, **kwargs):
        raise UnauthenticatedError("User is not authenticated")

    monkeypatch.setattr(kagglehub, "dataset_download", denied)
    with pytest.raises(DataError, match=r"not authenticated.*KAGGLE_USERNAME"):
        download_dataset("owner/name")


def test_download_prints_path_for_every_configured_dataset(monkeypatch, tmp_path, capsys):
    got = []

    def fake(handle, output_dir=None):
        got.append((handle, output_dir))
        return str(tmp_path / handle.replace("/", "_"))

    monkeypatch.setattr(kagglehub, "dataset_download", fake)
    rc = main(["data", "download", "--out", str(tmp_path / "dl"), "--set", "data.kaggle_datasets=[a/b, c/d]"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [h for h, _ in got] == ["a/b", "c/d"]
    assert got[0][1] == str(tmp_path / "dl" / "a__b")
    assert f"a/b: {tmp_path / 'a_b'}" in out and f"brainmri data import {tmp_path / 'c_d'}" in out


def test_bad_handle_is_an_error():
    with pytest.raises(DataError, match="OWNER/NAME"):
        download_dataset("just-a-name")
