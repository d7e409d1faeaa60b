# Try the operator by hand without Docker: the cluster-up cluster, MinIO on its pod network,
# the chart installed and the example ready to apply (tests/cluster/demo.py). `make
# cluster-down` stops MinIO with the cluster (`python -m tests.cluster.demo down`: MinIO only).
.PHONY: cluster-demo

cluster-demo: install ## cluster-up + MinIO + the operator chart; prints the kubectl commands to try (no Docker)
	@tests/cluster/build-binaries.sh etcd kubernetes helm minio >/dev/null
	@$(PY) -m tests.cluster.demo up --state-dir $(CLUSTER_STATE)
