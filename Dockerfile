# The images of docker-compose.yml, from one file:
#   --target cpu  scheduler, Dask workers, the world, the build, the server and the CPU trainer
#   --target gpu  the CUDA trainer (docker-compose.gpu.yml), with a C compiler: on CUDA the trainer
#                 runs a torch.compile'd FlexAttention, and Triton compiles at its first kernel
# Both hold the package with its `s3` extra and the torch version the README pins (TORCH_VERSION);
# the CPU image also holds bokeh, for the Dask dashboard the scheduler publishes.
# Docker's classic builder (docker-compose 1.29, `docker build` without BuildKit) builds every stage
# before the target, so `--target gpu` builds `cpu` too (cached when the stack was built first);
# BuildKit builds only what the target needs.
#
# Build arguments:
#   BASE_IMAGE       any Debian-like image with python3 (3.10+) and its venv module, e.g. where Docker
#                    Hub cannot be reached:
#                      debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm ROOT
#                      tar -C ROOT -c . | docker import - scale-alibi-base:bookworm
#   TORCH_INDEX      (cpu) the index of the CPU torch wheel; empty: WHEELS_URL must hold it
#   WHEELS_URL       more wheels for pip (--find-links), e.g. a local wheel directory
#                    served on the build's host network: http://127.0.0.1:8099/ (nothing of it stays
#                    in the image, unlike a wheel copied into the build context)
# docker/local/ca-bundle.crt, when present: the CA bundle pip trusts (a TLS-inspecting proxy).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# The README always matches, so the optional bundle may be absent.
COPY docker/local/README.md docker/local/*.crt /tmp/ca/
# A virtual environment: Debian's own python3 refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/venv \
 && if [ -f /tmp/ca/ca-bundle.crt ]; then cp /tmp/ca/ca-bundle.crt /opt/venv/ca-bundle.crt \
      && pip config --site set global.cert /opt/venv/ca-bundle.crt; fi \
 && rm -rf /tmp/ca \
 && useradd --create-home --uid 1000 curate \
 && mkdir -p /data /world && chown curate:curate /data /world
WORKDIR /app
# The dependencies before the source, so that a code change rebuilds one small layer.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /app/requirements.txt

FROM base AS cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELS_URL=
# PyPI's plain torch is the multi-GB CUDA build: the CPU wheel's +cpu local version outranks it.
RUN pip install ${WHEELS_URL:+--find-links ${WHEELS_URL}} ${TORCH_INDEX:+--extra-index-url ${TORCH_INDEX}} "torch==${TORCH_VERSION}" \
 && python -c "import sys, torch; sys.exit(f'the CPU image got torch {torch.__version__} with CUDA' if torch.version.cuda else 0)" \
 && pip install ${WHEELS_URL:+--find-links ${WHEELS_URL}} -r /app/requirements.txt "bokeh>=3.1"
COPY scale_alibi scale_alibi
RUN pip install --no-deps . && rm -rf build && curate --version
USER curate
EXPOSE 8000 8786 8787

FROM base AS gpu
ARG TORCH_VERSION=2.13.0
# PyPI's torch of that version is its CUDA build (no WHEELS_URL here: a local +cpu wheel would
# outrank it). python3-dev only where the base lacks Python.h (Triton's launcher is compiled
# against it; the python images ship it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
      $(python3 -c "import os, sysconfig; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3-dev')") \
 && rm -rf /var/lib/apt/lists/* \
 && pip install "torch==${TORCH_VERSION}" \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else f'the GPU image got torch {torch.__version__} without CUDA')" \
 && pip install -r /app/requirements.txt
COPY scale_alibi scale_alibi
COPY docker/gpu-check.sh /usr/local/bin/gpu-check
RUN pip install --no-deps . && rm -rf build && curate --version
USER curate
# One line naming torch, CUDA, the device and the compiler, then the command.
ENTRYPOINT ["gpu-check"]
