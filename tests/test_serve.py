"""HTTP service (brainmri.serve) on the tiny session bundle: endpoints, hardening, structured errors."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install -e '.[serve]')")

from fastapi.testclient import TestClient

import test_bundle_support as support
from brainmri.infer import Predictor
from brainmri.serve.app import STATIC_DIR, create_app
from brainmri.serve.errors import ApiError
from brainmri.serve.service import InferenceService
from brainmri.serve.settings import API_KEY_ENV, ServeSettings
from test_bundle_support import CLASSES, SIZE, phantom_images

bundle_dir = support.bundle_dir  # session fixtures shared with test_bundle.py / test_infer.py
tiny_run_dir = support.tiny_run_dir


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    arrays, _ = phantom_images(1, seed=3)
    return [png_bytes(a) for a in arrays]


@pytest.fixture(scope="module")
def service(bundle_dir: Path) -> InferenceService:
    svc = InferenceService(bundle_dir, ServeSettings(api_key=None))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(bundle_dir: Path, service: InferenceService) -> TestClient:
    app = create_app(bundle_dir, service.settings, service=service)
    return TestClient(app, raise_server_exceptions=False)


def post(client: TestClient, data: bytes, name: str = "x.png", path: str = "/v1/predict", **params):
    return client.post(path, params=params, files={"file": (name, data, "image/png")})


def assert_error(r, status: int, code: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] == r.headers["x-request-id"]
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    return err


# ------------------------------------------------------------------------------------------ status


def test_health_ready_and_model_card(client: TestClient, bundle_dir: Path) -> None:
    from brainmri.bundle.sealed import Bundle

    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    card_sha = Bundle.load(bundle_dir).card_sha256
    assert ready["status"] == "ready" and ready["model"]["card_sha256"] == card_sha
    model = client.get("/v1/model").json()
    assert model["card"]["classes"] == CLASSES and model["card"]["card_sha256"] == card_sha
    assert model["threshold"] == pytest.approx(0.3) and model["card"]["calibration"]["temperature"] == 1.7


def test_docs_openapi_and_page(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/predict", "/health", "/ready", "/v1/model"} <= set(schema["paths"])
    html = client.get("/docs")  # served offline: scripts and styles from the app, none from a CDN
    assert html.status_code == 200 and "https://" not in html.text
    assets = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', html.text)
    assert any(a.endswith(".js") for a in assets), html.text[:500]
    assert all(client.get(a).status_code == 200 for a in assets), assets
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch its logo from a CDN
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for f in STATIC_DIR.iterdir():  # no CDN: nothing loads from another origin
        text = f.read_text()
        assert "http://" not in text and "https://" not in text, f
        assert client.get(f"/static/{f.name}").status_code == 200


# ------------------------------------------------------------------------------------------ predict


def test_predict_matches_the_python_api(client: TestClient, bundle_dir: Path, images: list[bytes]) -> None:
    r = post(client, images[0], "slice.png")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    p = body["prediction"]
    with Predictor.from_bundle(bundle_dir) as predictor:
        ref = predictor.predict(images[0])[0]
    assert p["label"] == ref.label and p["filename"] == "slice.png"
    for c in CLASSES:
        assert p["probabilities"][c] == pytest.approx(ref.probabilities[c], abs=1e-6)
    assert p["tumor_probability"] == pytest.approx(ref.tumor_probability, abs=1e-6)
    assert p["is_tumor"] == ref.is_tumor and p["threshold"] == pytest.approx(0.3)
    assert p["conformal_set"] == ref.conformal_set and p["conformal_alpha"] == pytest.approx(0.1)
    assert p["confidence"] == pytest.approx(max(ref.probabilities.values()))
    assert p["uncertainty"]["entropy"] == pytest.approx(ref.entropy, abs=1e-6)
    assert p["input"] == {"format": "png", "height": 64, "width": 64, "mode": "L"}
    assert p["gradcam_png_base64"] is None and "preview_png_base64" not in p
    assert body["model"]["card_sha256"] and body["timings_ms"]["total"] > 0


def test_threshold_preview_tta(client: TestClient, images: list[bytes]) -> None:
    low = post(client, images[1], threshold=0.0).json()["prediction"]
    high = post(client, images[1], threshold=1.0).json()["prediction"]
    assert low["is_tumor"] is True and low["threshold"] == 0.0 and low["threshold_source"] == "request"
    assert high["is_tumor"] is (high["tumor_probability"] >= 1.0)
    p = post(client, images[1], preview="true", tta="true").json()["prediction"]
    from PIL import Image

    preview = Image.open(io.BytesIO(base64.b64decode(p["preview_png_base64"])))
    assert preview.size == (SIZE, SIZE) and preview.mode == "L"
    assert_error(post(client, images[1], threshold=1.5), 422, "invalid_request", "threshold")
    mc = post(client, images[1], mc_dropout=4).json()["prediction"]["uncertainty"]["mc_dropout"]
    assert mc["passes"] == 4 and set(mc["std"]) == set(CLASSES)
    assert_error(post(client, images[1], mc_dropout=1), 422, "invalid_request", "at least 2")


def test_gradcam_overlay_and_clear_501_without_torch(client, images, monkeypatch) -> None:
    from PIL import Image

    p = post(client, images[2], gradcam="true").json()["prediction"]
    overlay = Image.open(io.BytesIO(base64.b64decode(p["gradcam_png_base64"])))
    assert overlay.size == (SIZE, SIZE) and overlay.mode == "RGB"
    import sys

    from brainmri.errors import BrainMRIError

    # as in an install without torch, for a bundle without class-activation outputs
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    service = client.app.state.service
    if hasattr(service.predictor, "gradcam_maps"):

        def no_torch(*args, **kwargs):
            raise BrainMRIError("Grad-CAM needs torch for this bundle (no class-activation output)")

        monkeypatch.setattr(service.predictor, "gradcam_maps", no_torch)
    assert_error(post(client, images[2], gradcam="true"), 501, "gradcam_unavailable", "gradcam needs")


def test_reference_predict_alias_shape(client: TestClient, images: list[bytes]) -> None:
    r = post(client, images[0], path="/predict", threshold=0.0)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"predicted_class", "confidence", "is_tumor", "tumor_probability", "inference_time_ms"}
    assert body["predicted_class"] in CLASSES and body["is_tumor"] is True and body["inference_time_ms"] > 0


def test_batch_reports_errors_per_file(client: TestClient, images: list[bytes]) -> None:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[:3])]
    files.append(("files", ("notes.txt", b"not an image at all", "text/plain")))
    r = client.post("/v1/predict/batch", files=files, params={"preview": "true"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True, True, True, False]
    assert results[3]["status"] == 415 and "notes.txt" in results[3]["error"]["message"]
    single = post(client, images[1]).json()["prediction"]
    assert results[1]["prediction"]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)
    many = [("files", (f"{i}.png", images[0], "image/png")) for i in range(17)]
    assert_error(client.post("/v1/predict/batch", files=many), 413, "too_many_files", "at most 16")
    assert_error(client.post("/v1/predict/batch"), 422, "invalid_request", "files")


def test_optional_out_of_domain_fields_are_passed_through(service: InferenceService, bundle_dir: Path) -> None:
    with Predictor.from_bundle(bundle_dir) as predictor:
        pred = predictor.predict(phantom_images(1, seed=5)[0][0])[0]
    assert "in_domain" not in service.payload(pred) or hasattr(pred, "in_domain")
    pred.in_domain, pred.ood_score = False, 3.5
    payload = service.payload(pred)
    assert payload["in_domain"] is False and payload["ood_score"] == 3.5


# ------------------------------------------------------------------------------------------ hardening


@pytest.mark.parametrize(
    "kind, status, code",
    [
        ("empty", 400, "empty_file"),
        ("unreadable", 415, "unsupported_media_type"),
        ("truncated", 422, "truncated_image"),
        ("too_large", 413, "image_too_large"),
    ],
)
def test_bad_images_are_4xx_naming_the_problem(client, bad_images, tmp_path, kind, status, code) -> None:
    path = bad_images(tmp_path)[kind]
    err = assert_error(post(client, path.read_bytes(), path.name), status, code, path.name)
    assert len(err["message"]) > len(path.name) + 10
    assert client.get("/health").status_code == 200


def test_missing_fields_bad_multipart_and_unknown_routes(client: TestClient) -> None:
    assert_error(client.post("/v1/predict"), 422, "invalid_request", "missing field 'file'")
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    r = client.post("/v1/predict", content=b"--x\r\nbroken", headers=multipart)
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"]
    assert_error(client.post("/v1/predict", json={"file": "abc"}), 422, "invalid_request", "file")
    assert_error(client.get("/v2/nothing"), 404, "not_found", "/v2/nothing")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed", "GET")


def test_upload_limit_413_before_reading(bundle_dir: Path, service: InferenceService, images: list[bytes]) -> None:
    settings = ServeSettings(max_upload_bytes=4096)
    small = TestClient(create_app(bundle_dir, settings, service=service), raise_server_exceptions=False)
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200)))
    assert len(big) > 4096
    assert_error(post(small, big), 413, "payload_too_large", "4,096-byte upload limit")

    def chunks():  # no Content-Length: counted as it streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(10):
            yield b"\0" * 1024

    r = small.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 413, "payload_too_large", "upload limit")


def test_uploads_never_touch_the_disk(client: TestClient, monkeypatch) -> None:
    import tempfile

    def refuse(*a, **k):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    rng = np.random.default_rng(1)
    big = png_bytes(rng.integers(0, 255, (1100, 1100)))
    assert len(big) > 1024 * 1024  # over Starlette's default in-memory spool size
    r = post(client, big, "big.png")
    assert r.status_code == 200, r.text


def test_api_key(bundle_dir: Path, service: InferenceService, images: list[bytes], monkeypatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    settings = ServeSettings.from_env()
    assert settings.api_key == "s3cret" and "s3cret" not in repr(settings)
    app = TestClient(create_app(bundle_dir, settings, service=service), raise_server_exceptions=False)
    assert_error(post(app, images[0]), 401, "unauthorized", "X-API-Key")
    r = app.post("/v1/predict", files={"file": ("a.png", images[0])}, headers={"X-API-Key": "wrong"})
    assert_error(r, 401, "unauthorized")
    assert app.get("/v1/model").status_code == 401
    assert app.get("/health").status_code == 200 and app.get("/ready").status_code == 200
    r = app.post("/v1/predict", files={"file": ("a.png", images[0])}, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200


def test_cors_off_by_default_and_on_when_configured(bundle_dir, service, client) -> None:
    r = client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    settings = ServeSettings(cors_origins=["https://ok.example"])
    app = TestClient(create_app(bundle_dir, settings, service=service))
    r = app.get("/health", headers={"Origin": "https://ok.example"})
    assert r.headers["access-control-allow-origin"] == "https://ok.example"


def test_queue_limit_503_and_timeout_504(bundle_dir: Path) -> None:
    svc = InferenceService(bundle_dir, ServeSettings(workers=1, queue_limit=1, timeout_s=0.3))

    async def scenario():
        slow = [asyncio.ensure_future(svc.submit(time.sleep, 0.6)) for _ in range(2)]  # one runs, one waits
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as full:
            await svc.submit(time.sleep, 0)
        results = await asyncio.gather(*slow, return_exceptions=True)
        return full.value, results

    try:
        full, results = asyncio.run(scenario())
        assert full.status == 503 and full.headers["Retry-After"] == "1" and "busy" in full.message
        assert all(isinstance(r, ApiError) and r.status == 504 for r in results)
        time.sleep(1.0)  # the timed-out jobs finish and free their slots
        assert svc.pending == 0
        assert asyncio.run(svc.submit(lambda: 7)) == 7
    finally:
        svc.close()


def test_request_id_and_json_access_log(client: TestClient, images: list[bytes], caplog) -> None:
    with caplog.at_level(logging.INFO, logger="brainmri.serve.access"):
        files = {"file": ("secret-name.png", images[0])}
        r = client.post("/v1/predict", files=files, headers={"X-Request-ID": "abc-1"})
    assert r.headers["x-request-id"] == "abc-1" and r.json()["request_id"] == "abc-1"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "brainmri.serve.access"]
    entry = next(e for e in lines if e["request_id"] == "abc-1")
    assert entry["status"] == 200 and entry["path"] == "/v1/predict" and entry["bytes_in"] > 0
    assert "secret-name" not in json.dumps(lines)  # no request data in the log


def test_settings_and_cli_defaults() -> None:
    import argparse

    from brainmri.cliargs import common_parser, flag_overrides
    from brainmri.config import load_config
    from brainmri.serve.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), common_parser())
    args = parser.parse_args(["serve", "bundles/x", "--workers", "3", "--no-gradcam", "--cors-origin", "https://a.b"])
    cfg = load_config(None, flag_overrides(args))  # every flag is a shortcut for a serve.* config key
    assert args.bundle == "bundles/x" and cfg.serve.workers == 3 and cfg.serve.host == "127.0.0.1"
    assert cfg.serve.gradcam is False and cfg.serve.cors_origins == ["https://a.b"]
    s = ServeSettings()
    assert s.host == "127.0.0.1" and s.cors_origins == [] and s.api_key is None
    with pytest.raises(ValueError, match="workers"):
        ServeSettings(workers=0)
