#!/usr/bin/env bash
# Installs what real nodes need from the machine's packages: containerd, runc, iptables and
# conntrack (kube-proxy's rules), with apt-get. A no-op when they are all there.
# Needs root. Safe next to other apt-get runs (waits up to 10 min for the dpkg lock).
set -euo pipefail
need=()
for tool in containerd:containerd ctr:containerd runc:runc iptables:iptables conntrack:conntrack; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
[ ${#need[@]} -gt 0 ] || exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
  echo "real nodes need ${need[*]}; install them with your package manager" >&2
  exit 3
fi
if [ "$(id -u)" != 0 ]; then
  echo "real nodes need ${need[*]}: run 'make realnode-setup' as root (apt-get install)" >&2
  exit 3
fi
echo "installing ${need[*]} for the real nodes" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"
