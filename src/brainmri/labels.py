"""Class-label constants: the one home of the class names every stage agrees on.

It sits at the bottom of the import graph (next to ``errors``) because the config schema needs the
canonical classes for its defaults and every layer above (data, calibrate, infer, evaluate) needs the
tumour / no-tumour names.
"""

from __future__ import annotations

CANONICAL_CLASSES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")
"""The canonical order: a class index everywhere is the position in ``cfg.data.classes`` (default this)."""
NO_TUMOR = "no_tumor"
"""The class whose complement is the tumour probability: p_tumour = 1 - p(no_tumor)."""
TUMOR = "tumor"
"""Label of binary 'yes' sets: some tumour, type unknown (audit and external validation, never 4-class training)."""
