# The real-node lane: nodes run by the real kubelet over containerd + runc + CNI, kube-proxy and
# CoreDNS, joined to the test cluster (tests/cluster/realnode, tests/realnode).
.PHONY: realnode-setup binaries-realnode test-realnode

realnode-setup: ## install containerd, runc, iptables and conntrack with apt-get (root; a no-op when present)
	@tests/cluster/realnode/install-tools.sh

binaries-realnode: ## build kubelet, kube-proxy, the CNI plugins and CoreDNS from their Go modules (cached)
	@tests/cluster/build-binaries.sh kubernetes-node cni coredns >/dev/null

test-realnode: install binaries-optional images-optional ## the real-node e2e: the chart, MinIO and a digits job on real containers
	@tests/cluster/build-binaries.sh --optional kubernetes-node cni coredns >/dev/null
	$(PY) -m pytest tests/realnode $(PYTEST_ARGS)
