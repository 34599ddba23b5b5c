"""Settings of the HTTP service (``brainmri serve``).

The fields are the ``serve`` section of :mod:`brainmri.config` (``--set serve.workers=4`` works like every
other key, and every ``brainmri serve`` flag is a shortcut for one of them).
The API key never comes from a file: ``BRAINMRI_API_KEY`` in the environment (or ``api_key=`` in code).
"""

from __future__ import annotations

import os

from pydantic import Field

from brainmri.config import ServeConfig

API_KEY_ENV = "BRAINMRI_API_KEY"


class ServeSettings(ServeConfig):
    """The ``serve`` config section plus the API key, which only the environment (or code) may give."""

    api_key: str | None = Field(None, repr=False)
    """When set, /v1/* and /predict need the header ``X-API-Key``; default from $BRAINMRI_API_KEY."""

    @classmethod
    def from_env(cls, **values: object) -> ServeSettings:
        """Settings from ``values``, with ``api_key`` taken from $BRAINMRI_API_KEY unless given."""
        if values.get("api_key") is None and os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls(**{k: v for k, v in values.items() if v is not None})
