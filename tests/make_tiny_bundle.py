"""Write a tiny exported bundle and three PNG slices into a folder (for .ci/inference_only.sh).

Usage: python tests/make_tiny_bundle.py OUT_DIR  ->  OUT_DIR/bundle/, OUT_DIR/images/*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brainmri.bundle import export_bundle
from test_bundle_support import build_run, fit_gate, phantom_images, write_png


def main(out: Path) -> None:
    (out / "run").mkdir(parents=True, exist_ok=True)
    run = build_run(out / "run")
    fit_gate(run)  # both out-of-domain scores: the deployed gate is exercised without scikit-learn too
    export_bundle(run.dir, out / "bundle")
    images, _ = phantom_images(1, seed=3)
    for i, image in enumerate(images[:3]):
        write_png(out / "images" / f"slice{i}.png", image)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
