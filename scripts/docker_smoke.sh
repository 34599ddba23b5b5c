#!/usr/bin/env bash
# Build the Docker image, run it with a bundle, check /ready, one prediction and the reference /predict
# shape, then the container's HEALTHCHECK status; print the image size. Removes its container at the end.
#
#   scripts/docker_smoke.sh [BUNDLE] [IMAGE_FILE]
#     BUNDLE      default bundles/cpu-fast; when absent a tiny test bundle is exported (needs .venv with torch)
#     IMAGE_FILE  an image to predict (default: a real slice from ../shared/data, else the tiny bundle's PNG)
#   env: IMAGE (tag, default brainmri:smoke), PORT (default 18080), BASE_IMAGE (build arg),
#        WHEELHOUSE=1 to build offline from wheels made here with `pip wheel` (no PyPI in the build)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-brainmri:smoke}
PORT=${PORT:-18080}
NAME=brainmri-smoke-$$
BUNDLE=${1:-bundles/cpu-fast}
INPUT=${2:-}
tmp=$(mktemp -d)
cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT

command -v docker >/dev/null || { echo "docker_smoke: no docker client" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "docker_smoke: no Docker daemon reachable (start dockerd)" >&2; exit 2; }

if [ ! -f "$BUNDLE/card.json" ]; then
  echo "[docker_smoke] $BUNDLE not found: exporting a tiny test bundle" >&2
  .venv/bin/python tests/make_tiny_bundle.py "$tmp/tiny" >/dev/null
  BUNDLE=$tmp/tiny/bundle
  INPUT=${INPUT:-$tmp/tiny/images/slice0.png}
fi
if [ -z "$INPUT" ]; then
  INPUT=$(ls ../shared/data/brain-tumor-mri/Training/glioma/* 2>/dev/null | head -1 || true)
fi
[ -n "$INPUT" ] && [ -f "$INPUT" ] || { echo "docker_smoke: no image to predict (pass IMAGE_FILE)" >&2; exit 2; }

build_args=()
[ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ "${WHEELHOUSE:-0}" = 1 ]; then
  echo "[docker_smoke] building wheels for .[serve] into ./wheelhouse" >&2
  .venv/bin/python -m pip wheel -q ".[serve]" -w wheelhouse
fi
echo "[docker_smoke] docker build -t $IMAGE ${build_args[*]:-} ." >&2
start=$(date +%s)
docker build -q -t "$IMAGE" "${build_args[@]}" . >/dev/null
echo "[docker_smoke] built in $(( $(date +%s) - start )) s" >&2

docker run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" -v "$(realpath "$BUNDLE"):/bundle:ro" "$IMAGE" >/dev/null
url=http://127.0.0.1:$PORT
for _ in $(seq 1 120); do
  if curl -fsS "$url/ready" >/dev/null 2>&1; then break; fi
  if [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]; then docker logs "$NAME" >&2; exit 1; fi
  sleep 1
done
curl -fsS "$url/ready"; echo
out=$(curl -fsS -F "file=@$INPUT" "$url/v1/predict")
echo "$out" | python3 -c 'import json,sys; p=json.load(sys.stdin)["prediction"]; print("predict:", p["filename"], p["label"], round(p["confidence"], 3), "tumour", p["is_tumor"])'
ref=$(curl -fsS -F "file=@$INPUT" "$url/predict?threshold=0.5")
echo "$ref" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert set(d) == {"predicted_class","confidence","is_tumor","tumor_probability","inference_time_ms"}, d; print("reference /predict:", d)'
code=$(curl -s -o /dev/null -w '%{http_code}' -F "file=@README.md" "$url/v1/predict")
[ "$code" = 415 ] || { echo "docker_smoke: a text file gave HTTP $code, expected 415" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -F "file=@$INPUT" "$url/v1/predict?gradcam=true")
echo "gradcam=true without torch: HTTP $code (501 expected)"
user=$(docker exec "$NAME" id -un)
echo "runs as: $user"
[ "$user" != root ] || { echo "docker_smoke: container runs as root" >&2; exit 1; }
for _ in $(seq 1 90); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = starting ] || break
  sleep 2
done
echo "HEALTHCHECK: $health"
[ "$health" = healthy ] || { echo "docker_smoke: container is $health" >&2; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $(( size / 1024 / 1024 )) MiB"
echo "docker_smoke: OK"
