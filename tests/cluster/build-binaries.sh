#!/usr/bin/env bash
# Builds the real Kubernetes control plane, etcd, helm, MinIO, mc and Prometheus from their Go
# modules with the local Go toolchain. Each component lands in its own versioned folder
# under the cache, so a pin change rebuilds only that component and a warm run is a no-op.
#
#   tests/cluster/build-binaries.sh [--optional] [component ...]   # default: all but the node lane
#   tests/cluster/build-binaries.sh kubernetes-node cni coredns   # the real-node lane
#
# Prints the bin folder on its last line. FEDKUBE_CACHE overrides the cache root.
# Concurrent invocations (two shells, pytest-xdist workers) are safe: each component is built
# under its own lock, and a second builder waits for the first and then finds it cached.
# --optional: when a component must be built but Go is missing, say why and exit 0 (the tests
# that need it then skip, printing the same reason), unless FEDKUBE_E2E=required.
set -euo pipefail

optional=0
if [ "${1:-}" = "--optional" ]; then optional=1; shift; fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${FEDKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedkube}
bin="$cache/bin"
mkdir -p "$bin" "$cache/build"
# The Go toolchain here builds every pin; never fetch another one behind the user's back.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Go is needed only when something must be built: cached binaries work without it.
require_go() {
  command -v go >/dev/null 2>&1 && return 0
  log "the Go toolchain is not installed, so $1 cannot be built; install Go >= 1.26 (https://go.dev/dl/) and rerun"
  if [ "$optional" = 1 ] && [ "${FEDKUBE_E2E:-}" != required ]; then
    log "continuing without it: the tests that need $1 will be skipped"
    echo "$bin"
    exit 0
  fi
  exit 3
}

# lock NAME: hold an exclusive lock on NAME until this script exits (fd stays open).
lock() {
  mkdir -p "$cache/locks"
  local fd
  exec {fd}>"$cache/locks/$1.lock"
  if command -v flock >/dev/null 2>&1; then
    if ! flock -n "$fd"; then
      log "$1: another build holds the lock; waiting for it"
      flock "$fd"
    fi
  else
    log "flock(1) not found: concurrent builds of $1 are not serialised"
  fi
}

# wrapper_build NAME MODULE VERSION REL_VERSION LDFLAGS PKG...
# Builds PKGs of MODULE@VERSION inside a throwaway wrapper module whose go.mod is the
# module's own (same dependency versions as upstream's release build), with upstream's
# local-path replaces (staging dirs, sibling modules) turned into published versions.
wrapper_build() {
  local name=$1 module=$2 version=$3 relversion=$4 ldflags=$5; shift 5
  local out="$bin/$name-$version"
  if [ -f "$out/.complete" ]; then
    log "$name $version: cached"
    link "$name" "$out"
    return
  fi
  lock "$name-$version"
  if [ -f "$out/.complete" ]; then  # built by the holder of the lock we waited for
    log "$name $version: cached"
    link "$name" "$out"
    return
  fi
  require_go "$name"
  local work="$cache/build/$name-$version"
  rm -rf "$work" "$out"; mkdir -p "$work" "$out"
  log "$name $version: resolving $module"
  local modfile
  modfile=$(cd "$work" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  python3 - "$modfile" "$module" "$version" "$relversion" >"$work/go.mod" <<'PY'
import re, sys
path, module, version, relversion = sys.argv[1:]
out = []
for line in open(path):
    s = line.strip()
    if s.startswith("module "):
        out.append("module fedkube.local/build\n")
        continue
    if s.startswith("toolchain "):
        continue
    m = re.match(r"^(replace\s+)?(\S+)(\s+v\S+)?\s+=>\s+(\.\.?/\S*|\./FORBIDDEN\S*)\s*$", s)
    if m:
        target = m.group(2)
        if "FORBIDDEN" in m.group(4):
            continue
        prefix = "replace " if m.group(1) else "\t"
        out.append(f"{prefix}{target} => {target} {relversion}\n")
        continue
    out.append(line)
out.append(f"\nrequire {module} {version}\n")
sys.stdout.write("".join(out))
PY
  if [ -n "${MAIN_GO:-}" ]; then
    cp "$MAIN_GO" "$work/main.go"   # a main package of our own, built against MODULE
  else
    printf 'package build\n' >"$work/doc.go"
  fi
  log "$name $version: compiling ${*} (this takes a while on a cold cache)"
  local start=$SECONDS
  (cd "$work" && go build -trimpath ${BUILD_TAGS:+-tags "$BUILD_TAGS"} -ldflags "-s -w $ldflags" -o "$out/" "$@")
  post_build "$name" "$out"
  touch "$out/.complete"
  link "$name" "$out"
  rm -rf "$work"
  log "$name $version: built in $((SECONDS - start))s"
}

# link NAME DIR: point the unversioned NAME at DIR atomically (readers never see it missing).
link() {
  ln -sfn "$2" "$bin/.$1.$$"
  mv -Tf "$bin/.$1.$$" "$bin/$1"
}

# post_build NAME DIR: fix up what `go build -o DIR/` names after the package path.
post_build() {
  case "$1" in
    etcd) [ -f "$2/etcd" ] || mv "$2/v3" "$2/etcd" 2>/dev/null || mv "$2/server" "$2/etcd" ;;
    coredns) mv "$2/build" "$2/coredns" ;;
  esac
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  local minor=${v#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ld="-X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  wrapper_build kubernetes k8s.io/kubernetes "$v" "$KUBERNETES_STAGING_VERSION" "$ld" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# The node half of the same Kubernetes module, for the real-node lane (tests/cluster/realnode):
# its own folder, so adding it never rebuilds the control plane.
build_kubernetes_node() {
  local v=$KUBERNETES_VERSION
  local minor=${v#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ld="-X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  wrapper_build kubernetes-node k8s.io/kubernetes "$v" "$KUBERNETES_STAGING_VERSION" "$ld" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

# The CNI plugins a real node's pod network needs: bridge + host-local addresses, loopback,
# portmap (hostPort).
build_cni() {
  local m=github.com/containernetworking/plugins
  wrapper_build cni "$m" "$CNI_PLUGINS_VERSION" "$CNI_PLUGINS_VERSION" \
    "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "$m/plugins/main/bridge" "$m/plugins/main/loopback" "$m/plugins/ipam/host-local" "$m/plugins/meta/portmap"
}

# CoreDNS, the real-node lane's cluster DNS, with only the plugins it uses (realnode/coredns).
build_coredns() {
  MAIN_GO="$here/realnode/coredns/main.go" \
  wrapper_build coredns github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_VERSION" "" .
}

build_etcd() {
  wrapper_build etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
}

build_helm() {
  wrapper_build helm helm.sh/helm/v3 "$HELM_VERSION" "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm
}

build_minio() {
  wrapper_build minio github.com/minio/minio "$MINIO_VERSION" "$MINIO_VERSION" "" github.com/minio/minio
}

build_mc() {
  wrapper_build mc github.com/minio/mc "$MC_VERSION" "$MC_VERSION" "" github.com/minio/mc
}

build_prometheus() {
  local pkg=github.com/prometheus/common/version
  # Only the Kubernetes service discovery the tests use: leaving out the cloud providers' SDKs
  # (AWS, Azure, GCE, ...) more than halves a cold build.
  BUILD_TAGS=remove_all_sd,enable_kubernetes_sd \
  wrapper_build prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" "$PROMETHEUS_VERSION" \
    "-X $pkg.Version=$PROMETHEUS_VERSION -X $pkg.Branch=release" github.com/prometheus/prometheus/cmd/prometheus
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kubernetes helm minio mc prometheus)
total=$SECONDS
for c in "${components[@]}"; do
  case "$c" in
    etcd|kubernetes|helm|minio|mc|prometheus|cni|coredns) "build_$c" ;;
    kubernetes-node) build_kubernetes_node ;;
    *) log "unknown component '$c' (known: etcd kubernetes kubernetes-node cni coredns helm minio mc prometheus)"; exit 2 ;;
  esac
done
log "all requested components ready in $((SECONDS - total))s"
echo "$bin"
