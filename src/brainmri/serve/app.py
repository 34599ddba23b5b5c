"""The FastAPI application: ``create_app(bundle_path, settings)``.

Endpoints (see docs/serve.md): ``GET /health``, ``GET /ready``, ``GET /v1/model``, ``POST /v1/predict``,
``POST /v1/predict/batch``, ``POST /predict`` (the reference design's response shape), the web page at
``/`` (static files, no CDN) and the OpenAPI docs at ``/docs`` (Swagger UI served by the app itself through
``fastapi-offline``: hospital networks are often cut off from CDNs).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from brainmri.serve.errors import ApiError, install_error_handlers, request_id_of
from brainmri.serve.middleware import RequestContextMiddleware
from brainmri.serve.service import InferenceService, Options, clean_name
from brainmri.serve.settings import ServeSettings


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brainmri")
    except PackageNotFoundError:  # running from a source tree without an install
        return "unknown"


__version__ = _version()
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"

Threshold = Annotated[
    float | None, Query(ge=0.0, le=1.0, description="tumour-probability threshold (default: the bundle's)")
]
Tta = Annotated[bool, Query(description="average over 10 flipped and shifted views")]
Gradcam = Annotated[bool, Query(description="add a Grad-CAM overlay PNG (base64); needs torch on the server")]
McDropout = Annotated[
    int, Query(ge=0, le=50, description="MC-dropout passes (mean and sd of probabilities); needs torch on the server")
]
Preview = Annotated[bool, Query(description="add the preprocessed model input as a PNG (base64)")]


def _keep_uploads_in_memory(limit: int) -> None:
    """Starlette spools upload parts over 1 MiB to a temporary file; raise that to the body limit so
    no request data touches the disk (the middleware refuses bodies over the limit before parsing)."""
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(int(getattr(MultiPartParser, "spool_max_size", 0)), limit + 1)
    if hasattr(MultiPartParser, "max_part_size"):
        MultiPartParser.max_part_size = max(int(MultiPartParser.max_part_size), limit + 1)


async def _read(upload: UploadFile, index: int = 0) -> tuple[bytes, str]:
    data = await upload.read()
    await upload.close()
    return data, clean_name(upload.filename, index)


def create_app(
    bundle_path: str | Path, settings: ServeSettings | None = None, service: InferenceService | None = None
) -> FastAPI:
    """The app over the bundle at ``bundle_path``, loaded and verified now (a bad bundle raises BundleError)."""
    settings = settings or ServeSettings.from_env()
    service = service or InferenceService(bundle_path, settings)
    _keep_uploads_in_memory(settings.max_upload_bytes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPIOffline(  # a FastAPI app whose /docs loads Swagger UI from the app itself, not from a CDN
        title="brainmri",
        version=__version__,
        description="Brain MRI slice classification (research use only; not a medical device).",
        lifespan=lifespan,
        redoc_url=None,  # ReDoc still fetches its logo from a CDN (tests/test_serve_browser.py); Swagger UI does not
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "X-Request-ID"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_upload_bytes,
        api_key=settings.api_key,
        log=settings.access_log,
    )
    _add_status_routes(app, service)
    _add_predict_routes(app, service)
    _add_page(app)
    return app


def _add_status_routes(app: FastAPI, service: InferenceService) -> None:
    started = time.time()

    @app.get("/health", tags=["status"], summary="the process is up")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started, 1), "version": __version__}

    @app.get("/ready", tags=["status"], summary="the bundle is loaded, verified and warmed up")
    async def ready(request: Request) -> JSONResponse:
        if not service.ready:
            return JSONResponse(
                {"error": {"code": "not_ready", "message": "model not loaded", "request_id": request_id_of(request)}},
                status_code=503,
            )
        body = {
            "status": "ready",
            "model": service.model_info,
            "pending": service.pending,
            "capacity": service.capacity,
        }
        return JSONResponse(body)

    @app.get("/v1/model", tags=["model"], summary="the bundle's model card (card.json) and its sha256")
    async def model_card() -> dict[str, Any]:
        return {"model": service.model_info, "threshold": service.predictor.threshold, "card": service.bundle.card}


def _add_predict_routes(app: FastAPI, service: InferenceService) -> None:
    settings = service.settings

    @app.post("/v1/predict", tags=["predict"], summary="classify one image (JPEG, PNG, DICOM, NIfTI...)")
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="the image")],
        threshold: Threshold = None,
        tta: Tta = False,
        gradcam: Gradcam = False,
        preview: Preview = False,
        mc_dropout: McDropout = 0,
    ) -> JSONResponse:
        data, name = await _read(file)
        service.check_upload(data, name)
        options = Options(threshold, tta, gradcam, preview, mc_dropout)
        result = await service.submit(service.predict_one, data, name, options)
        return JSONResponse({"request_id": request_id_of(request), "model": service.model_info, **result})

    @app.post("/v1/predict/batch", tags=["predict"], summary="classify several images; errors per file")
    async def predict_batch(
        request: Request,
        files: Annotated[list[UploadFile], File(description="the images")],
        threshold: Threshold = None,
        tta: Tta = False,
        gradcam: Gradcam = False,
        preview: Preview = False,
        mc_dropout: McDropout = 0,
    ) -> JSONResponse:
        if len(files) > settings.max_batch_files:
            raise ApiError(413, "too_many_files", f"{len(files)} files; at most {settings.max_batch_files} per batch")
        uploads = [await _read(f, i) for i, f in enumerate(files)]
        options = Options(threshold, tta, gradcam, preview, mc_dropout)
        result = await service.submit(service.predict_many, uploads, options)
        return JSONResponse({"request_id": request_id_of(request), "model": service.model_info, **result})

    @app.post("/predict", tags=["predict"], summary="reference-design shape (predicted_class, confidence, ...)")
    async def predict_reference(
        file: Annotated[UploadFile, File(description="the image")], threshold: Threshold = None
    ) -> dict[str, Any]:
        start = time.perf_counter()
        data, name = await _read(file)
        service.check_upload(data, name)
        result = await service.submit(service.predict_one, data, name, Options(threshold))
        p = result["prediction"]
        return {
            "predicted_class": p["label"],
            "confidence": p["confidence"],
            "is_tumor": p["is_tumor"],
            "tumor_probability": p["tumor_probability"],
            "inference_time_ms": round((time.perf_counter() - start) * 1000.0, 3),
        }


def _add_page(app: FastAPI) -> None:
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"}
        return HTMLResponse(page, headers=headers)
