# The IMF link-prediction service (`imf serve`), CPU only. See docs/deployment.md.
#
#   scripts/container_wheels.sh                      # fills wheels/ with the CPU torch wheel
#   docker build -t imf-serve .                      # model mounted at run time (a)
#   docker build -t imf-serve:baked --build-arg BAKE_MODEL=1 .   # default model baked in (b)
#   docker run -p 8000:8000 -v "$PWD/artifacts/default:/models/default:ro" imf-serve
#
# With podman, add `--format docker` to `podman build` to keep the HEALTHCHECK (the OCI image
# format has no field for it).
#
# Stages: `build` makes a virtual environment in /opt/venv (torch from wheels/ only, never an
# index, then the project and its other dependencies from PyPI); `model` trains the bundled
# default model into /models/default when BAKE_MODEL=1 (else leaves /models empty); the final
# stage is the slim base plus those two folders, run as an unprivileged user. No compiler, no
# pip cache, no wheels/ or data/ in the final image.

ARG PYTHON_IMAGE=python:3.11-slim

# ----------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# 1. PyTorch, CPU build, from the local wheel folder only (`pip install torch` from PyPI would
#    pull the multi-GB CUDA build). Its own small dependencies come with step 2. Refuse a wheel
#    that depends on CUDA packages.
COPY wheels/ /tmp/wheels/
RUN pip install --no-index --find-links /tmp/wheels --no-deps torch \
 && python -c "import importlib.metadata as m, sys; bad = [r for r in (m.requires('torch') or []) if r.lower().startswith(('nvidia', 'triton'))]; sys.exit(f'wheels/ holds a CUDA build of torch (needs {bad}); use the +cpu wheel, see scripts/container_wheels.sh' if bad else 0)"

# 2. The project's dependencies, from pyproject.toml alone (stub packages), so that editing the
#    code does not reinstall them. torch is already satisfied, so pip leaves it alone.
COPY pyproject.toml constraints.txt ./
RUN mkdir -p model service && touch model/__init__.py service/__init__.py \
 && pip install -c constraints.txt . \
 && pip uninstall -y imf-serve \
 && rm -rf model service build *.egg-info

# 3. Trim what serving never uses: the C++ headers and the C++ test binaries of torch (about
#    190 MB). torch/bin/torch_shm_manager stays: `import torch` checks for it.
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/include" "$site/torch/test" \
 && find "$site/torch/bin" -type f ! -name torch_shm_manager -delete

# 4. The project itself (README* is optional: the glob matches nothing when it is absent).
COPY pyproject.toml README* ./
COPY model/ model/
COPY service/ service/
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && python -c "import torch, faiss, service.app; assert torch.version.cuda is None, torch.__version__" \
 && rm -rf build *.egg-info

# ----------------------------------------------------------------------------- model
# BAKE_MODEL=1 trains the bundled default model (service.cli.DEFAULT_TRAINING: FB15k-237, at
# most 5 minutes of training) into /models/default; BAKE_TRAIN_ARGS replaces those arguments
# (e.g. "--dataset db15k --dim 64 --epochs 50"). BAKE_MODEL=0 leaves /models empty, to be
# mounted at run time.
FROM build AS model
ARG BAKE_MODEL=0
ARG BAKE_TRAIN_ARGS=""
COPY data/ /src/data/
RUN mkdir -p /models \
 && if [ "$BAKE_MODEL" = 1 ]; then \
      args="$BAKE_TRAIN_ARGS"; \
      [ -n "$args" ] || args=$(python -c "from service.cli import DEFAULT_TRAINING; print(' '.join(DEFAULT_TRAINING))"); \
      echo "training: imf train $args --out /models/default"; \
      IMF_DATA_DIR=/src/data imf train $args --out /models/default \
      && python -c "from pathlib import Path; from model.bundle import read_manifest, verify_files; p = Path('/models/default'); verify_files(p, read_manifest(p))"; \
    elif [ "$BAKE_MODEL" != 0 ]; then echo "BAKE_MODEL must be 0 or 1, got '$BAKE_MODEL'" >&2; exit 1; \
    fi \
 && chmod -R a+rX,go-w /models

# ----------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="imf-serve" \
      org.opencontainers.image.description="IMF multimodal knowledge-graph link prediction service (CPU)"
RUN groupadd --gid 10001 imf \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/imf --shell /usr/sbin/nologin imf
COPY --from=build /opt/venv /opt/venv
COPY --from=model /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMF_HOST=0.0.0.0 \
    IMF_PORT=8000 \
    IMF_BUNDLE=/models/default
USER 10001:10001
WORKDIR /home/imf
EXPOSE 8000
# Liveness only (the process answers); /ready says when the model is loaded.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('IMF_PORT', '8000'), timeout=4)"]
# Every setting comes from IMF_* variables (service/settings.py); never trains at start.
CMD ["imf", "serve", "--no-train"]
