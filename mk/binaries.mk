# Real components built from their Go modules, cached outside the repo.
.PHONY: binaries minio

binaries: ## build etcd, Kubernetes, helm, MinIO, mc and Prometheus from source (cached; warm run is instant)
	@tests/cluster/build-binaries.sh

minio: ## build only MinIO and mc (what the integration tests need)
	@tests/cluster/build-binaries.sh minio mc
