# Runtime: the aggregator's round loop, the local runner and the fedkube CLI.
.PHONY: test-runtime demo-status

RUNTIME_TESTS := tests/unit/test_rounds.py tests/unit/test_cli.py tests/unit/test_cli_progress.py \
	tests/integration/test_aggregator.py tests/integration/test_run_local.py

test-runtime: install ## runtime tests: round rules, CLI, aggregator, `fedkube run` end to end
	$(PY) -m pytest $(RUNTIME_TESTS) $(PYTEST_ARGS)

demo-status: install ## show the committed rounds of the demo run (make demo)
	$(VENV)/bin/fedkube status --job examples/digits.yaml
