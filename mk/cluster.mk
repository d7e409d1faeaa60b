# A real Kubernetes for tests and tinkering without Docker (tests/cluster), and kind for
# machines with Docker. State of `make cluster-up` lives in .cluster/ (gitignored).
.PHONY: cluster-up cluster-up-real cluster-down cluster-status cluster-cleanup binaries-optional kind-up kind-down

CLUSTER_STATE ?= .cluster

cluster-up: install ## start a local control plane + process kubelet in the background (no Docker); prints KUBECONFIG
	@tests/cluster/build-binaries.sh etcd kubernetes helm >/dev/null
	@$(PY) -m tests.cluster up --state-dir $(CLUSTER_STATE)

cluster-up-real: install ## as cluster-up, plus a node of the real kubelet (real-a) holding the built images (root; make containers-setup first; ~4 min warm, mostly the image imports)
	@tests/cluster/build-binaries.sh etcd kubernetes helm minio kubernetes-node cni coredns >/dev/null
	@archives=$$(images/build.sh --stand-in-bases | awk '{printf " --image %s", $$3}') && \
	  $(PY) -m tests.cluster up --state-dir $(CLUSTER_STATE) --real-node real-a $$archives

cluster-down: ## stop the cluster-up cluster; removes its processes, network namespaces, veths and bridge
	@$(PY) -m tests.cluster down --state-dir $(CLUSTER_STATE)

cluster-status: ## health of the cluster-up cluster: components, nodes, pods
	@$(PY) -m tests.cluster status --state-dir $(CLUSTER_STATE)

cluster-cleanup: ## remove what crashed test clusters left behind (pods, netns, veths, bridges)
	@$(PY) -m tests.cluster cleanup

binaries-optional: ## as `binaries`, but without Go only warn (the tests then skip) unless FEDKUBE_E2E=required
	@tests/cluster/build-binaries.sh --optional >/dev/null

kind-up: ## needs Docker + kind: a local kind cluster with MinIO (says so and stops where there is no Docker)
	@tests/cluster/kind/up.sh up

kind-down: ## delete the kind-up cluster
	@tests/cluster/kind/up.sh down
