"""brainmri: brain MRI slice classification that audits, calibrates, explains and serves its decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from brainmri.infer.predictor import Predictor


def load_bundle(path: Any, **kwargs: Any) -> Predictor:
    """Load a verified model bundle and return a Predictor with ``.predict(path | array | list)``."""
    from brainmri.infer.predictor import Predictor

    return Predictor.from_bundle(path, **kwargs)


__all__ = ["__version__", "load_bundle"]
