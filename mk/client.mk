# Client runtime: tasks, init_distributed, the client's round loop, real gloo DDP groups.
CLIENT_TESTS := tests/unit/test_tasks_base.py tests/unit/test_tasks_digits.py \
	tests/unit/test_tasks_synthetic.py tests/unit/test_distributed.py tests/unit/test_client.py \
	tests/integration/test_client_ddp.py

.PHONY: test-client

test-client: install ## client runtime tests: tasks, DDP setup, round loop, real 2-rank gloo groups
	$(PY) -m pytest $(CLIENT_TESTS) $(PYTEST_ARGS)
