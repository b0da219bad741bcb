# One Dockerfile, two images (docker-compose.yml builds both): the CPU image (default) for the
# scheduler, workers and server, and the GPU image for the trainer, which differs only in the
# torch wheel: `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124`.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# torch first: the default index's plain `torch` is the multi-GB CUDA build, which the CPU
# roles do not need; the GPU image asks for it explicitly.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.5"
COPY pyproject.toml README.md ./
COPY scale_alibi scale_alibi
RUN pip install .
EXPOSE 8000 8786 8787
