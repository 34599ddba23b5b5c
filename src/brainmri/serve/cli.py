"""``brainmri serve BUNDLE``: the HTTP API and web page on http://127.0.0.1:8000 (localhost by default).

The bundle is loaded, verified (sha256 of every file) and warmed up once before the port opens.
``--workers`` is the number of inference jobs run at once (threads in one process: decoding,
preprocessing and ONNX Runtime release the GIL, and one process holds one copy of the model).
Set BRAINMRI_API_KEY to require the header X-API-Key on /v1/* and /predict. See docs/serve.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from brainmri.cliargs import add_config_flag
from brainmri.config import Config


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from brainmri.serve.app import create_app
    from brainmri.serve.settings import ServeSettings

    settings = ServeSettings.from_env(**cfg.serve.model_dump())
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app = create_app(args.bundle, settings)
    model = app.state.service.model_info
    key = "on (X-API-Key)" if settings.api_key else "off"
    print(
        f"serving {model['name']} (card sha256 {model['card_sha256'][:12]}) on http://{settings.host}:{settings.port}"
        f"  workers={settings.workers} queue={settings.queue_limit} api-key {key}",
        file=sys.stderr,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``brainmri serve``."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="HTTP API + web page over a bundle (FastAPI, ONNX Runtime)",
        description="The HTTP API and web page over a bundle, on http://127.0.0.1:8000 (localhost by default). The "
        "bundle is loaded, verified (sha256 of every file) and warmed up once before the port opens. --workers is "
        "the number of inference jobs run at once (threads in one process). Set BRAINMRI_API_KEY to require the "
        "header X-API-Key on /v1/* and /predict. See docs/serve.md.",
    )
    p.add_argument("bundle", help="bundle folder (written by brainmri export)")
    add_config_flag(p, "--host", "serve.host", help="interface to bind (0.0.0.0 in a container)")
    add_config_flag(p, "--port", "serve.port", type=int, help="port")
    add_config_flag(p, "--workers", "serve.workers", type=int, help="inference jobs at once")
    add_config_flag(p, "--threads", "serve.threads", type=int, help="ONNX Runtime threads per job")
    add_config_flag(p, "--queue-limit", "serve.queue_limit", type=int, help="requests waiting before 503")
    add_config_flag(p, "--timeout", "serve.timeout_s", type=float, metavar="S", help="per-request limit (504)")
    add_config_flag(p, "--max-upload-bytes", "serve.max_upload_bytes", type=int, help="request body limit (413)")
    add_config_flag(p, "--cors-origin", "serve.cors_origins", action="append", help="allow this origin (repeatable)")
    add_config_flag(p, "--no-gradcam", "serve.gradcam", action="store_false", help="refuse gradcam=true (501)")
    add_config_flag(p, "--no-access-log", "serve.access_log", action="store_false", help="no JSON access log")
    p.set_defaults(handler=_serve)
