"""Settings of the HTTP service (``brainmri serve``).

A pydantic model so that a bad value is an error naming the field; it is meant to become the ``serve``
section of :mod:`brainmri.config` (then ``--set serve.workers=4`` works like every other key).
The API key never comes from a file: ``BRAINMRI_API_KEY`` in the environment (or ``api_key=`` in code).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from brainmri.io.reader import DEFAULT_MAX_PIXELS

API_KEY_ENV = "BRAINMRI_API_KEY"


class ServeSettings(BaseModel):
    """Limits and switches of the service; every field has a safe default (localhost, no CORS, no key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    """Interface to bind; the default answers only this machine (use 0.0.0.0 in a container)."""
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(2, ge=1, le=64)
    """Inference jobs running at once (threads: decode, preprocessing and ONNX Runtime release the GIL)."""
    threads: int = Field(1, ge=1, le=64)
    """ONNX Runtime intra-op threads per job; workers x threads should not exceed the cores."""
    queue_limit: int = Field(32, ge=0)
    """Requests allowed to wait for a worker; beyond it the service answers 503 with Retry-After."""
    timeout_s: float = Field(30.0, gt=0)
    """Longest a request may wait for and run its inference before it gets 504."""
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body (all files of a batch together); larger ones get 413 before they are read."""
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    """Largest image (width x height) decoded, checked from the header: the decompression-bomb guard."""
    max_batch_files: int = Field(16, ge=1)
    api_key: str | None = Field(None, repr=False)
    """When set, /v1/* and /predict need the header ``X-API-Key``; default from $BRAINMRI_API_KEY."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty (the default): no CORS headers, browsers allow same-origin only."""
    gradcam: bool = True
    """Allow ``gradcam=true`` (needs torch and grad-cam installed; 501 otherwise)."""
    access_log: bool = True
    """One JSON line per request on the ``brainmri.serve.access`` logger (stderr): no file names, no data."""
    retry_after_s: int = Field(1, ge=1)

    @classmethod
    def from_env(cls, **values: object) -> ServeSettings:
        """Settings from ``values``, with ``api_key`` taken from $BRAINMRI_API_KEY unless given."""
        if values.get("api_key") is None and os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls(**{k: v for k, v in values.items() if v is not None})
