"""User-facing errors.

Every mistake a user can make (a bad file, a bad config key, a tampered bundle) raises a subclass of
``BrainMRIError``. The CLI prints its message as one line and exits with status 2, so users never
see a traceback for their own mistakes; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BrainMRIError(Exception):
    """Base class of errors caused by user input; the message is shown as is."""


class NotFittedError(BrainMRIError, ValueError):
    """A fitted object (Nyúl landmarks, temperature, threshold, conformal quantiles) was used before ``fit``."""


class ConfigError(BrainMRIError):
    """Invalid config file, unknown key, wrong type or bad ``--set`` override."""


class ImageReadError(BrainMRIError):
    """An image could not be read. ``path`` names the file, ``reason`` says why (one line)."""

    kind = "unreadable"

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableImageError(ImageReadError):
    kind = "unreadable"


class TruncatedImageError(ImageReadError):
    kind = "truncated"


class EmptyImageError(ImageReadError):
    kind = "empty"


class ImageTooLargeError(ImageReadError):
    kind = "too_large"


class DegenerateImageError(ImageReadError):
    """Decodes, but holds no usable picture: blank, all NaN, a few pixels wide, a strip, or a 4-D series."""

    kind = "degenerate"


class DataError(BrainMRIError):
    """A data folder, manifest or split file is missing or inconsistent."""


class BundleError(BrainMRIError):
    """A model bundle is missing files, was modified, or does not match this version."""
