#!/usr/bin/env bash
# `make kind-up`: a real local Kubernetes cluster in Docker (kind) plus MinIO, for machines
# that have Docker. Machines without Docker use `make cluster-up` (tests/cluster) instead.
#
#   tests/cluster/kind/up.sh [up|down]
#
# Uses the pinned kubectl and mc from the fedkube cache (`make binaries`) and `kind` from PATH.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${KIND_CLUSTER:-fedkube}
node_image=${KIND_NODE_IMAGE:-kindest/node:v1.34.0}
minio_image=${MINIO_IMAGE:-minio/minio:RELEASE.2025-04-22T22-12-26Z}
bucket=${MINIO_BUCKET:-fedkube}
cache=${FEDKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedkube}
kubectl=$(command -v kubectl || echo "$cache/bin/kubernetes/kubectl")
mc="$cache/bin/mc/mc"
ctx="kind-$name"

say() { printf '[kind-up] %s\n' "$*" >&2; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  say "this machine has no running Docker engine, so a kind cluster cannot run here."
  say "use 'make cluster-up' instead: the same Kubernetes components as local processes, no Docker."
  exit 2
fi
if ! command -v kind >/dev/null 2>&1; then
  say "kind is not installed; see https://kind.sigs.k8s.io/docs/user/quick-start/ (or: go install sigs.k8s.io/kind@latest)"
  exit 2
fi

if [ "${1:-up}" = down ]; then
  kind delete cluster --name "$name"
  exit 0
fi

if kind get clusters 2>/dev/null | grep -qx "$name"; then
  say "kind cluster '$name' exists; reusing it"
else
  say "creating kind cluster '$name' ($node_image)"
  kind create cluster --name "$name" --image "$node_image" --config "$here/kind.yaml" --wait 180s
fi

say "deploying MinIO ($minio_image) as minio.minio:9000"
sed "s|@MINIO_IMAGE@|$minio_image|" "$here/minio.yaml" | "$kubectl" --context "$ctx" apply -f -
"$kubectl" --context "$ctx" -n minio rollout status deploy/minio --timeout=300s

say "creating bucket '$bucket' (through a port-forward, with the pinned mc)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$kubectl" --context "$ctx" -n minio port-forward svc/minio "$port:9000" >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  MC_HOST_kind="http://fedkube:fedkube-test-only@127.0.0.1:$port" "$mc" ls kind >/dev/null 2>&1 && break
  sleep 0.2
done
MC_HOST_kind="http://fedkube:fedkube-test-only@127.0.0.1:$port" "$mc" mb --ignore-existing "kind/$bucket"

say "S3 credentials for jobs: Secret s3-creds in namespace default"
"$kubectl" --context "$ctx" -n default create secret generic s3-creds \
  --from-literal=AWS_ACCESS_KEY_ID=fedkube --from-literal=AWS_SECRET_ACCESS_KEY=fedkube-test-only \
  --dry-run=client -o yaml | "$kubectl" --context "$ctx" apply -f -

say "ready: storage endpoint http://minio.minio:9000, bucket $bucket; stop with 'make kind-down'"
echo "kubectl config use-context $ctx"
