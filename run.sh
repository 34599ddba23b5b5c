#!/usr/bin/env bash
# One entry point for people and CI.
#   ./run.sh [--data PATH]   the main job: the whole pipeline on real data (import -> ... -> predict)
#   ./run.sh test            the test suite (what CI runs)
#   ./run.sh <command> ...   any brainmri command, e.g. ./run.sh data audit work/data/manifest.csv
# Creates .venv on first use and (re)installs when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[run.sh] installing dependencies into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  # torch first, pinned: these releases are on this project's machines' disk
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[train,serve,dev,download]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"

case "${1:-}" in
  test)
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    shift
    exec "$VENV/bin/ruff" check src tests bench "$@"
    ;;
  -*|"")
    # no command (or only options such as --data PATH): the main job with the CPU recipe
    exec "$VENV/bin/brainmri" pipeline --config configs/cpu-fast.yaml "$@"
    ;;
  *)
    exec "$VENV/bin/brainmri" "$@"
    ;;
esac
