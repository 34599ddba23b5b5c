#!/usr/bin/env bash
# The deployed path without the training stack: a venv with only `pip install .[serve]` (no torch, timm,
# Lightning, scikit-learn, pandas) must verify a bundle and predict with ONNX Runtime. The bundle itself is
# exported with the full install (.venv) first.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

.venv/bin/python tests/make_tiny_bundle.py "$tmp"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$tmp/venv/bin/python" -m pip install -q ".[serve]"

"$tmp/venv/bin/python" - "$tmp" <<'PY'
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

tmp = Path(sys.argv[1])
missing = [m for m in ("torch", "timm", "lightning", "sklearn", "pandas") if importlib.util.find_spec(m) is None]
assert len(missing) == 5, f"the inference-only venv has training packages: {set(('torch', 'timm', 'lightning', 'sklearn', 'pandas')) - set(missing)}"
out = tmp / "predictions.json"
cli = Path(sys.executable).with_name("brainmri")
subprocess.run([str(cli), "predict", str(tmp / "bundle"), str(tmp / "images"), "--out", str(out)], check=True)
doc = json.loads(out.read_text())
assert len(doc["predictions"]) == 3 and not doc["errors"], doc
gate = [(p["ood_score"], p["ood_block_score"], p["in_domain"]) for p in doc["predictions"]]
assert all(isinstance(f, float) and isinstance(b, float) and isinstance(i, bool) for f, b, i in gate), gate
if importlib.util.find_spec("brainmri.serve") is not None:
    from brainmri.serve.app import create_app  # noqa: F401  (the service imports without torch too)
print(f"inference-only install: {len(doc['predictions'])} predictions without torch/timm/lightning")
PY
