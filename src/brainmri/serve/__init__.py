"""HTTP service and web page over a bundle: ``brainmri serve BUNDLE`` (FastAPI + uvicorn, ONNX Runtime).

Imports only the inference layer and below (``infer``, ``io``, ``config``, ``models`` for Grad-CAM).
"""

from brainmri.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):  # create_app imports FastAPI: only when asked for
    if name == "create_app":
        from brainmri.serve.app import create_app

        return create_app
    raise AttributeError(name)
