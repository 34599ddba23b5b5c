"""Property-based tests of the service with malformed uploads: always a 4xx naming the problem, never a 5xx.

Hypothesis draws random bytes, image magic numbers followed by garbage, truncations and bit flips of
valid files in every supported format, header-only decompression bombs, wrong content types and odd
file names; the named cases of the issue (empty, truncated, bomb, 16-bit and odd modes, huge
dimensions, bad DICOM, NIfTI without slices, missing fields) run once each. After all of them the
server still answers. Also schemathesis against /openapi.json when it is installed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install -e '.[serve]')")
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import serve_inputs as si  # noqa: E402
import test_bundle_support as support  # noqa: E402
from brainmri.serve.app import create_app  # noqa: E402
from brainmri.serve.service import InferenceService  # noqa: E402
from brainmri.serve.settings import ServeSettings  # noqa: E402

bundle_dir = support.bundle_dir
tiny_run_dir = support.tiny_run_dir

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
VALID = si.valid_cases(np.random.default_rng(0))
CONTENT_TYPES = ["image/png", "image/jpeg", "application/dicom", "text/plain", "application/json", ""]


@contextlib.contextmanager
def subnormals_allowed():
    """Hypothesis' float strategies refuse to run while flush-to-zero is on (``setup_torch`` turns it on)."""
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> TestClient:
    service = InferenceService(bundle_dir, ServeSettings(access_log=False))
    yield TestClient(create_app(bundle_dir, service.settings, service=service), raise_server_exceptions=False)
    service.close()


def check(client: TestClient, case: si.Case, content_type: str | None = None) -> int:
    files = {"file": (case.name, case.data, content_type if content_type is not None else case.content_type)}
    r = client.post("/v1/predict", files=files)
    assert r.status_code < 500, (case.kind, r.status_code, r.text)
    if case.valid:
        assert r.status_code == 200, (case.kind, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert si.names_problem(err["message"], case.name), (case.kind, err)
        assert err["request_id"] == r.headers["x-request-id"]
    else:
        assert r.json()["prediction"]["label"] in support.CLASSES
    return r.status_code


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.kind)
def test_odd_but_valid_images_are_predicted(client: TestClient, case: si.Case) -> None:
    assert check(client, case) == 200


EXPECTED = {
    "empty": 400, "text": 415, "html": 415, "json": 415, "truncated_png": 422, "truncated_jpeg": 422,
    "png_bomb": 413, "png_bomb_16bit": 413, "gif_bomb": 413, "bmp_bomb": 413, "nifti_gzip_bomb": 413,
    "nifti_no_slices": 400, "dicom_garbage": 422, "dicom_no_pixels": 422, "dicom_short_pixels": 422,
}  # fmt: skip


@pytest.mark.parametrize("case", si.fixed_bad_cases(np.random.default_rng(1)), ids=lambda c: c.kind)
def test_named_malformed_uploads(client: TestClient, case: si.Case) -> None:
    status = check(client, case)
    assert 400 <= status < 500
    if case.kind in EXPECTED:
        assert status == EXPECTED[case.kind], case.kind


@FUZZ
@given(data=st.binary(max_size=4096), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes(client: TestClient, data: bytes, content_type: str) -> None:
    check(client, si.Case("random", "random.bin", data), content_type)


@FUZZ
@given(magic=st.sampled_from(sorted(si.MAGICS)), tail=st.binary(max_size=2048))
def test_magic_numbers_followed_by_garbage(client: TestClient, magic: str, tail: bytes) -> None:
    ext = {"dicom": ".dcm", "gzip": ".nii.gz"}.get(magic, "." + magic)
    status = check(client, si.Case(magic, f"garbage{ext}", si.MAGICS[magic] + tail))
    assert 400 <= status < 500


@FUZZ
@given(base=st.sampled_from(VALID), cut=st.integers(0, 980), flips=st.lists(st.integers(0, 10**6), max_size=12))
def test_truncated_and_corrupted_valid_files(client: TestClient, base: si.Case, cut: int, flips: list[int]) -> None:
    # cut in per mille (integers: torch's flush-to-zero setting makes hypothesis refuse float strategies)
    data = bytearray(base.data[: max(1, len(base.data) * cut // 1000)] if cut > 20 else base.data)
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    check(client, si.Case("mutated", "mutated_" + base.name, bytes(data)))


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), bits=st.sampled_from([1, 8, 16]))
def test_huge_or_zero_dimensions_in_the_header(client: TestClient, width: int, height: int, bits: int) -> None:
    status = check(client, si.Case("dims", "dims.png", si.png_header_bomb(width, height, bits)))
    if width * height > 40_000_000:
        assert status == 413


@FUZZ
@given(name=st.text(max_size=300), field=st.sampled_from(["file", "image", "upload", ""]))
def test_odd_file_names_and_wrong_fields(client: TestClient, name: str, field: str) -> None:
    r = client.post("/v1/predict", files={field or "x": (name, VALID[0].data, "image/png")})
    assert r.status_code < 500, r.text
    if field != "file":
        assert r.status_code == 422 and "missing field 'file'" in r.json()["error"]["message"]
    elif not name:  # a part without a file name is a text field, not an upload
        assert r.status_code == 422 and "must be a file upload" in r.json()["error"]["message"]
    else:
        assert r.status_code == 200, r.text


def test_server_keeps_answering(client: TestClient) -> None:
    for case in si.fixed_bad_cases(np.random.default_rng(2))[:6]:
        check(client, case)
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    assert check(client, VALID[0]) == 200


def test_schemathesis_against_the_openapi_schema(client: TestClient) -> None:
    """Every operation of /openapi.json with generated parameters and bodies: no 5xx, responses parse."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: list[str] = []
    statuses: list[int] = []

    def runner(operation):
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{operation.label}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                assert response.json()["error"]["message"]

        return run

    with subnormals_allowed():
        for op in schema.get_all_operations():
            runner(op.ok())()
    assert failures == []
    assert len(statuses) >= 6 * 5, statuses  # every operation was called with several generated cases
