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

from brainmri.config import Config


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from brainmri.serve.app import create_app
    from brainmri.serve.settings import ServeSettings

    settings = ServeSettings.from_env(
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        queue_limit=args.queue_limit,
        timeout_s=args.timeout,
        max_upload_bytes=None if args.max_upload_mb is None else int(args.max_upload_mb * 1024 * 1024),
        max_pixels=cfg.data.max_pixels,
        cors_origins=args.cors_origin or None,
        gradcam=False if args.no_gradcam else None,
        access_log=False if args.no_access_log else None,
    )
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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle folder (from `brainmri export`)")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=None, help="inference jobs at once (default 2)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per job (default 1)")
    p.add_argument("--queue-limit", type=int, default=None, help="requests waiting before 503 (default 32)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-request limit, 504 (default 30)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="request body limit, 413 (default 32)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable; default none)")
    p.add_argument("--no-gradcam", action="store_true", help="refuse gradcam=true (501)")
    p.add_argument("--no-access-log", action="store_true", help="no JSON-lines access log on stderr")
    p.set_defaults(handler=_serve)
