# brainmri HTTP service, CPU, inference only (no torch, timm or Lightning): ONNX Runtime + FastAPI.
#
#   docker build -t brainmri .                                    # bundle mounted at run time
#   docker build -t brainmri --build-arg BUNDLE=bundles/cpu-fast . # bundle baked in
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/bundles/cpu-fast:/bundle:ro" brainmri
#   docker run --rm -v "$PWD/bundles/cpu-fast:/bundle:ro" -v "$PWD/scans:/data:ro" brainmri brainmri predict /bundle /data
#
# Offline builds (no PyPI in the build): put wheels for linux/cp311, brainmri's own included, in ./wheelhouse
# (scripts/docker_smoke.sh does, with `pip wheel ".[serve]"`); the build then installs from there only. BASE_IMAGE must provide python3.11
# with venv (the default, or a Debian bookworm image with python3 and python3-venv).
# Grad-CAM needs torch, which this image leaves out: gradcam=true answers 501 with the reason.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# pyproject.toml makes the pattern match even without a wheelhouse folder
COPY pyproject.toml wheelhouse* /wheels/
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN if ls /wheels/brainmri-*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links /wheels "brainmri[serve]"; \
    else \
        /opt/venv/bin/pip install "/src[serve]"; \
    fi \
 && /opt/venv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the image'" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ARG BUNDLE=docker/no-bundle
LABEL org.opencontainers.image.title="brainmri" \
      org.opencontainers.image.description="Brain MRI slice classifier (research use only): HTTP API + web page"
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin brainmri
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root ${BUNDLE} /bundle
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRAINMRI_NO_PROGRESS=1 \
    HOME=/tmp
USER brainmri
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
CMD ["python", "-m", "brainmri.serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
