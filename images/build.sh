#!/usr/bin/env bash
# Builds fedkube's operator and runtime images and saves each as a docker-archive under the cache,
# keyed by a content hash of what goes into it (images/CONTRACT.md), so a warm run builds nothing
# and a node without a registry can load exactly what was built.
#
#   images/build.sh [--optional] [--stand-in-bases | --bases-only] [operator|runtime ...]   # default: both
#
# Builds with Docker when an engine answers (`docker info`), else with podman (configured by
# images/containers-env.sh, state under the cache). FEDKUBE_IMAGE_BUILDER=docker|podman forces one.
# --stand-in-bases: build on local Debian stand-ins of the FROM images (debootstrap: Python, and
#   Python + torch for the runtime) instead of pulling the official ones; what tests
#   and air-gapped users do. OPERATOR_BASE / RUNTIME_BASE name any other base instead.
# --bases-only: build (or find) the stand-in bases, print `<name>-base <tag>` lines, stop there.
# --optional: when nothing can build images, say why and exit 0 (the image tests then skip with
#   the same reason), unless FEDKUBE_E2E=required.
# Prints one line per image on stdout, last: `<name> <ref> <archive>`. FEDKUBE_CACHE overrides
# the cache root.
set -euo pipefail

optional=0 stand_in=0 bases_only=0 names=()
for arg in "$@"; do
  case $arg in
    --optional) optional=1 ;;
    --stand-in-bases) stand_in=1 ;;
    --bases-only) stand_in=1 bases_only=1 ;;
    operator | runtime) names+=("$arg") ;;
    *) echo "usage: $0 [--optional] [--stand-in-bases | --bases-only] [operator|runtime ...]" >&2; exit 2 ;;
  esac
done
[ "${#names[@]}" -gt 0 ] || names=(operator runtime)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cache=${FEDKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedkube}
out="$cache/images"
mkdir -p "$out" "$cache/locks"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
torch_version=$(sed -n 's/^torch==\(.*\)/\1/p' "$repo/constraints.txt")

log() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

unavailable() {
  log "$1"
  if [ "$optional" = 1 ] && [ "${FEDKUBE_E2E:-}" != required ]; then
    log "continuing without images: the image tests will be skipped"
    exit 0
  fi
  exit 3
}

declare -A held=()
lock() {  # lock NAME: hold an exclusive lock until this script exits
  [ -z "${held[$1]:-}" ] || return 0
  local fd
  exec {fd}>"$cache/locks/$1.lock"
  flock -n "$fd" || { log "$1: another build holds the lock; waiting for it"; flock "$fd"; }
  held[$1]=1
}

# ---- the builder ------------------------------------------------------------------------------
builder=${FEDKUBE_IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null 2>&1; then
    builder=podman
  else
    unavailable "neither a running Docker engine nor podman was found, so the images cannot be built; install podman, buildah, runc and debootstrap (make images-tools) or start Docker"
  fi
fi
build_opts=() pip_mounts=()
if [ "$builder" = podman ]; then
  command -v podman >/dev/null 2>&1 || unavailable "podman is not installed: make images-tools"
  # shellcheck source=containers-env.sh
  source "$here/containers-env.sh"
  # buildah writes each committed layer's tarball here first (default /var/tmp): keep it with
  # the storage, on the disk whose free space is checked below.
  export TMPDIR="$cache/containers/tmp"
  mkdir -p "$TMPDIR"
  # Builds reach the package index the way pip on this host does: its index, CA bundle and
  # timeout (from `pip config list`, which includes PIP_* variables), mounted read-only.
  pip_conf="$cache/containers/pip.conf"
  {
    echo "[global]"
    python3 -m pip config list 2>/dev/null |
      sed -n -E "s/^[^.]*\.(index-url|extra-index-url|cert|trusted-host|timeout|default-timeout)='(.*)'$/\1 = \2/p" |
      sort -u -t= -k1,1
  } >"$pip_conf.$$" && mv -f "$pip_conf.$$" "$pip_conf"
  pip_mounts+=(--volume "$pip_conf:/etc/pip.conf:ro")
  ca=$(sed -n 's/^cert = //p' "$pip_conf" | head -1)
  if [ -n "$ca" ] && [ -f "$ca" ]; then pip_mounts+=(--volume "$ca:$ca:ro"); fi
  build_opts+=(--network=host "${pip_mounts[@]}")
  if ! podman info >/dev/null 2>&1; then
    unavailable "podman cannot start: $(podman info 2>&1 | tail -1)"
  fi
elif ! docker info >/dev/null 2>&1; then
  unavailable "FEDKUBE_IMAGE_BUILDER=docker but no Docker engine answers"
fi
engine() { "$builder" "$@"; }
image_id() { engine image inspect --format '{{.Id}}' "$1" 2>/dev/null; }

# ---- stand-in bases: Debian + Python (+ torch), no registry ----------------------------------
debian_mirror() {  # the host's Debian mirror (apt sources), unless FEDKUBE_DEBIAN_MIRROR says
  [ -n "${FEDKUBE_DEBIAN_MIRROR:-}" ] && { echo "$FEDKUBE_DEBIAN_MIRROR"; return; }
  cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    grep -E -o '(URIs:|deb) +[a-z]+://[^ ]*/debian/?( |$)' | head -1 | awk '{print $2}'
}

debootstrap_base() {  # debootstrap_base NAME SUITE PACKAGES VENV_OPTIONS: prints its tag
  local name=$1 suite=$2 packages=$3 venv_opts=$4 key tag
  key=$(printf '%s\n' "$suite" "$packages" "venv:/opt/venv${venv_opts:+ $venv_opts}" | sha256sum | cut -c1-12)
  tag="localhost/fedkube-stand-in/$name:$suite-$key"
  if [ -z "$(image_id "$tag")" ]; then
    lock "base-$name-$key"
    if [ -z "$(image_id "$tag")" ]; then
      command -v debootstrap >/dev/null 2>&1 ||
        unavailable "debootstrap is not installed, so the stand-in base $tag cannot be built: make images-tools"
      [ "$(id -u)" = 0 ] || unavailable "debootstrap needs root to build the stand-in base $tag"
      local work="$cache/build/base-$name-$key" mirror start=$SECONDS
      mirror=$(debian_mirror)
      rm -rf --one-file-system "$work"; mkdir -p "$work"
      log "stand-in base $tag: debootstrap $suite with $packages (${mirror:-default mirror}), a few minutes"
      debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" ${mirror:+"$mirror"} \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
      # Debian's python refuses `pip install` into itself (PEP 668); a venv on PATH behaves
      # like the official images' Python.
      # shellcheck disable=SC2086
      chroot "$work/rootfs" python3 -m venv $venv_opts /opt/venv
      rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/*
      tar -C "$work/rootfs" --numeric-owner -c . | engine import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag" >/dev/null
      rm -rf --one-file-system "$work"
      log "stand-in base $tag: built in $((SECONDS - start))s"
    fi
  fi
  echo "$tag"
}

python_base() {  # Debian + Python: the operator image's stand-in
  debootstrap_base python bookworm python3,python3-venv,ca-certificates ""
}

torch_wheels() {  # torch_wheels BASE DIR: download torch $torch_version and its dependencies
  local start=$SECONDS
  log "downloading torch $torch_version and its dependencies from the package index (the CUDA build, about 2.8 GB)"
  rm -rf "$2"; mkdir -p "$2"
  # Inside the stand-in, so the wheels fit its Python and platform; pinned by constraints.txt.
  engine run --rm --network=host ${pip_mounts[@]+"${pip_mounts[@]}"} \
    --volume "$2:/wheels" --volume "$repo/constraints.txt:/constraints.txt:ro" \
    "$1" pip download --progress-bar off --quiet -c /constraints.txt -d /wheels "torch==$torch_version" >&2
  log "torch wheels: downloaded in $((SECONDS - start))s"
}

free_gb() { df -Pk "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }

torch_base() {  # the runtime image's stand-in: Debian + Python + torch from PyPI; prints its tag
  local python key tag wheels
  python=$(python_base)
  key=$(printf '%s\n' "$(image_id "$python")" "torch==$torch_version" | sha256sum | cut -c1-12)
  tag="localhost/fedkube-stand-in/python-torch:$torch_version-$key"
  if [ -z "$(image_id "$tag")" ]; then
    lock "base-torch-$key"
    if [ -z "$(image_id "$tag")" ]; then
      # PyPI's Linux torch is the CUDA build, and `import torch` loads the NVIDIA libraries even
      # on CPU: wheels 2.8 GB, installed 5.2 GB, and while the layer is committed a tarball of it
      # and the new layer (2 x 5.2 GB more; measured: ~20 GB at the peak, ~5.3 GB after).
      local need=20
      [ "$(free_gb "$cache")" -ge "$need" ] ||
        unavailable "the stand-in base with torch from PyPI (the CUDA build) needs about $need GB free under $cache to build, $(free_gb "$cache") GB are"
      wheels="$cache/build/torch-wheels-$torch_version"
      torch_wheels "$python" "$wheels"
      local start=$SECONDS
      log "stand-in base $tag: installing torch $torch_version from the downloaded wheels (no network)"
      local never=()
      [ "$builder" = docker ] || never=(--pull=never)
      # The wheel folder is the build context, bound (not copied) into the one RUN.
      engine build "${never[@]}" --network=none --tag "$tag" --file - "$wheels" >&2 <<DOCKERFILE
FROM $python
RUN --mount=type=bind,target=/wheels pip install --no-cache-dir --no-index --find-links=/wheels "torch==$torch_version"
DOCKERFILE
      # The image is the cache; the wheels would only double it on disk.
      rm -rf "$wheels"
      log "stand-in base $tag: built in $((SECONDS - start))s"
    fi
  fi
  echo "$tag"
}

# ---- the images -------------------------------------------------------------------------------
context_hash() {  # sha256 of the build context files the Dockerfile's .dockerignore keeps
  (cd "$repo" && find pyproject.toml README.md fedcore operator -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    sha256sum | cut -c1-64
}

build_image() {  # build_image NAME BASE
  local name=$1 base=$2 dockerfile="$here/$1.Dockerfile" ref="docker.io/fedkube/$1:$version"
  local base_id key archive pull=()
  if [ "$stand_in" = 1 ] || [ -n "$(image_id "$base")" ]; then
    pull=(--pull=never)
  else
    log "$name: pulling $base"
    engine pull "$base" >&2
  fi
  base_id=$(image_id "$base")
  [ -n "$base_id" ] || { log "$name: base image $base is not there"; exit 1; }
  key=$(printf '%s\n' "$builder" "$base" "$base_id" "$(sha256sum <"$dockerfile")" \
    "$(sha256sum <"$dockerfile.dockerignore")" "$(context_hash)" | sha256sum | cut -c1-16)
  archive="$out/$name-$key.tar"
  if [ -f "$archive" ] && [ -f "$out/$name-$key.json" ]; then
    log "$name $key: cached ($archive)"
  else
    # One image build at a time: the prune below must not see another build's stages.
    lock images-build
    if [ ! -f "$out/$name-$key.json" ]; then
      local start=$SECONDS
      log "$name $key: building on $base with $builder"
      if [ "$builder" = docker ]; then
        # (docker build has no --pull=never; it uses a local base without asking a registry)
        DOCKER_BUILDKIT=1 docker build --build-arg "BASE_IMAGE=$base" \
          --file "$dockerfile" --tag "$ref" "$repo" >&2
      else
        podman build "${pull[@]}" "${build_opts[@]}" --ignorefile "$dockerfile.dockerignore" \
          --build-arg "BASE_IMAGE=$base" --file "$dockerfile" --tag "$ref" "$repo" >&2
      fi
      local built=$SECONDS
      rm -f "$archive.partial"
      if [ "$builder" = docker ]; then
        docker save --output "$archive.partial" "$ref"
      else
        podman save --format docker-archive --output "$archive.partial" "$ref"
      fi
      mv -f "$archive.partial" "$archive"
      # Keep one archive per image and base: older keys are what earlier sources built.
      for stale in "$out/$name"-*.json; do
        [ "$stale" != "$out/$name-$key.json" ] || continue
        if grep -qF "\"base\": \"$base\"" "$stale" 2>/dev/null; then rm -f "${stale%.json}.tar" "$stale"; fi
      done
      # Build stages and the images earlier builds tagged are dangling now (fedkube's storage only).
      if [ "$builder" = podman ]; then podman image prune --force >/dev/null; fi
      python3 - "$out/$name-$key.json" <<PY
import json, sys
record = {"name": "$name", "ref": "$ref", "archive": "$archive", "key": "$key",
          "imageId": "$(image_id "$ref")", "base": "$base", "builder": "$builder",
          "sizeBytes": $(engine image inspect --format '{{.Size}}' "$ref")}
with open(sys.argv[1] + ".partial", "w") as f:
    json.dump(record, f, indent=1)
import os; os.replace(sys.argv[1] + ".partial", sys.argv[1])
PY
      log "$name $key: built in $((built - start))s, saved in $((SECONDS - built))s ($(du -h "$archive" | cut -f1))"
    fi
  fi
  echo "$name $ref $archive"
}

if [ "$bases_only" = 1 ]; then
  echo "operator-base $(python_base)"
  echo "runtime-base $(torch_base)"
  exit 0
fi

for name in "${names[@]}"; do
  case $name in
    operator) base=${OPERATOR_BASE:-} ;;
    runtime) base=${RUNTIME_BASE:-} ;;
  esac
  if [ -z "$base" ] && [ "$stand_in" = 1 ]; then
    if [ "$name" = operator ]; then base=$(python_base); else base=$(torch_base); fi
  fi
  # Without a stand-in, the Dockerfile's own default (the official image).
  [ -n "$base" ] || base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$here/$name.Dockerfile")
  build_image "$name" "$base"
done
