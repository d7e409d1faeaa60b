#!/usr/bin/env bash
# Installs what `make images` needs on a machine without a Docker engine: podman and buildah
# (build and run images without a daemon), runc (the OCI runtime: crun 1.8 refuses hybrid
# cgroup hierarchies), debootstrap (the stand-in base images, built without any image registry)
# and fuse-overlayfs/uidmap for storage and user namespaces. Debian/Ubuntu only, as root,
# non-interactive; waits for another apt/dpkg run to finish instead of failing on its lock.
#
#   images/install-tools.sh          # make images-tools
#
# Nothing here writes configuration: images/build.sh writes its containers.conf and
# storage.conf into its own state folder and points podman at them (CONTAINERS_CONF, ...).
set -euo pipefail

packages=(podman buildah runc debootstrap uidmap)
missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" = 0 ]; then
  echo "podman, buildah, runc and debootstrap are installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}; this script installs them with apt-get (Debian/Ubuntu); install them with your package manager" >&2
  exit 3
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing: ${missing[*]}; installing them needs root: sudo $0" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold)
echo "installing ${packages[*]} (missing: ${missing[*]})"
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${packages[@]}"
