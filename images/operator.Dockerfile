# syntax=docker/dockerfile:1
# The fedkube operator image: kopf, the Kubernetes client and fedkube's spec models and store
# client. No torch: the operator never trains (an import-linter contract keeps it that way).
#
#   docker build -f images/operator.Dockerfile -t fedkube/operator:0.1.0 .
#
# The build context is the repository root; operator.Dockerfile.dockerignore keeps it small.
# BASE_IMAGE: any image with Python 3.11 and pip on PATH (images/build.sh --stand-in-bases builds
# a Debian one without a registry).

ARG BASE_IMAGE=python:3.11.13-slim-bookworm
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedcore ./fedcore
COPY operator ./operator
# Wheels of fedkube and its operator extra only; the final stage installs them offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# fedkube's wheel is copied, not only bind-mounted: a COPY's content is part of the layer
# cache key, a bind mount from another stage is not to every builder (podman reused a stale
# install after a source change), so a changed checkout always reinstalls. 0.4 MB.
COPY --from=build /wheels/fedkube-*.whl /usr/local/share/fedkube/wheels/
# The user has a passwd entry: kopf names itself after it (getpass.getuser), and a UID without
# one stops the operator at start on a real kubelet (podman adds the entry itself, hiding it).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "fedkube[operator]==0.1.0" \
    && useradd --no-log-init --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin fedkube
# Non-root, numeric so runAsNonRoot can verify it; the chart's podSecurityContext uses the same.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["kopf"]
CMD ["run", "-m", "fedop", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
