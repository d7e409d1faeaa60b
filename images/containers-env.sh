#!/usr/bin/env bash
# The podman/buildah configuration fedkube builds and runs its images with, written into its own
# state folder instead of /etc: storage under the cache (overlay), runc as the OCI runtime (crun 1.8
# refuses hybrid cgroup hierarchies), ulimits inside common hard limits, short names resolved the
# way Docker does. Nothing outside the folder is touched; another podman on the machine keeps its own.
#
#   source images/containers-env.sh      # exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...
#   images/containers-env.sh             # prints the same as `export` lines (for tests, shells)
#
# FEDKUBE_CACHE overrides the cache root.
# Strict mode only when run: sourced, it must not change the caller's shell options.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then set -euo pipefail; fi

_fk_cache=${FEDKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedkube}
_fk_state="$_fk_cache/containers"
# Runtime state belongs on a tmpfs-like place that a reboot clears, per user.
_fk_run="${XDG_RUNTIME_DIR:-/tmp}/fedkube-containers-$(id -u)"
mkdir -p "$_fk_state/storage" "$_fk_run"

# Hard limits: a container asking for more than the host allows does not start.
_fk_nofile=$(ulimit -Hn); _fk_nproc=$(ulimit -Hu)
[ "$_fk_nofile" = unlimited ] || [ "$_fk_nofile" -gt 20000 ] && _fk_nofile=20000
[ "$_fk_nproc" = unlimited ] || [ "$_fk_nproc" -gt 32768 ] && _fk_nproc=32768

_fk_write() {  # write FILE from stdin only when it changed (concurrent readers never see half)
  local tmp="$1.$$"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

_fk_write "$_fk_state/containers.conf" <<CONF
# Written by images/containers-env.sh; edits are overwritten.
[containers]
default_ulimits = ["nofile=$_fk_nofile:$_fk_nofile", "nproc=$_fk_nproc:$_fk_nproc"]
cgroups = "enabled"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$_fk_state/events.log"
tmp_dir = "$_fk_run/libpod"
CONF

_fk_driver=overlay
grep -qw overlay /proc/filesystems 2>/dev/null || _fk_driver=vfs
_fk_write "$_fk_state/storage.conf" <<CONF
# Written by images/containers-env.sh; edits are overwritten.
[storage]
driver = "$_fk_driver"
graphroot = "$_fk_state/storage"
runroot = "$_fk_run/storage"
CONF

_fk_write "$_fk_state/registries.conf" <<CONF
# Written by images/containers-env.sh: short names (FROM python:3.11) mean what they mean to Docker.
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF

export CONTAINERS_CONF="$_fk_state/containers.conf"
export CONTAINERS_STORAGE_CONF="$_fk_state/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$_fk_state/registries.conf"

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for _fk_var in CONTAINERS_CONF CONTAINERS_STORAGE_CONF CONTAINERS_REGISTRIES_CONF; do
    printf 'export %s=%q\n' "$_fk_var" "${!_fk_var}"
  done
fi
