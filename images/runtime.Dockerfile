# syntax=docker/dockerfile:1
# The fedkube runtime image: what aggregator and client pods run. CUDA PyTorch from the
# official image, plus fedkube with its runtime extra (the base's torch satisfies it, so pip
# keeps it). GPU clients train with NCCL; the same image trains on CPU with gloo.
#
#   docker build -f images/runtime.Dockerfile -t fedkube/runtime:0.1.0 .
#
# The build context is the repository root; runtime.Dockerfile.dockerignore keeps it small.
# BASE_IMAGE: any image with Python 3.11, pip and torch on PATH (images/build.sh --stand-in-bases
# builds Debian + torch from PyPI without a registry).

ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedcore ./fedcore
COPY operator ./operator
# Only fedkube's own wheel; its dependencies come from the index below, torch from the base.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/fedkube
# fedkube's wheel is copied, not only bind-mounted: a COPY's content is part of the layer
# cache key, a bind mount from another stage is not to every builder (podman reused a stale
# install after a source change), so a changed checkout always reinstalls. 0.4 MB.
COPY --from=build /wheels/fedkube-*.whl /usr/local/share/fedkube/wheels/
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --find-links=/wheels "fedkube[runtime]==0.1.0" \
    && useradd --no-log-init --uid 65532 --user-group --create-home --home-dir /home/fedkube \
        --shell /usr/sbin/nologin fedkube
# Non-root, numeric so runAsNonRoot can verify it; the operator runs job pods as this UID.
USER 65532:65532
WORKDIR /home/fedkube
# The operator's pods run `fedkube aggregator --job ...` and `fedkube client --job ... --client ...`.
ENTRYPOINT ["fedkube"]
CMD ["--help"]
