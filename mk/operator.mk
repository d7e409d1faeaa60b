# The operator (operator/fedop): run it against any cluster, and benchmark its reconcile pass.
.PHONY: run-operator bench-operator

BENCH_TARGETS += bench-operator
BENCH_OPERATOR_ARGS ?=
OPERATOR_NAMESPACE ?=

run-operator: install ## run the operator here against the current KUBECONFIG (OPERATOR_NAMESPACE=ns to watch one namespace)
	$(VENV)/bin/kopf run -m fedop --standalone $(if $(OPERATOR_NAMESPACE),--namespace=$(OPERATOR_NAMESPACE),--all-namespaces)

bench-operator: install binaries minio ## operator reconcile time, one FederatedJob of 100 clients x 4 pods on a real API server, vs the plain client
	$(PY) bench/operator_reconcile.py $(BENCH_OPERATOR_ARGS)
