# Benchmarks: `make bench` runs every target listed in BENCH_TARGETS (others append theirs:
# `BENCH_TARGETS += bench-reconcile`). They print figures; they are not tests.
BENCH_TARGETS += bench-aggregation
BENCH_AGGREGATION_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed

BENCH_LEARNING_ARGS ?=

.PHONY: bench bench-deps bench-aggregation bench-learning

# The recipe expands BENCH_TARGETS when it runs, after every mk/*.mk has been read, so
# targets appended in files included after this one are run too.
bench: ## run every benchmark (not a test) and print its figures
	@$(MAKE) --no-print-directory $(BENCH_TARGETS)

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	@$(PY) -c 'import flwr, psutil' 2>/dev/null || $(PIP) install --progress-bar off -c constraints.txt -e '.[bench]'
	@touch $@

bench-deps: $(BENCH_STAMP) ## install the `bench` extra (flwr, psutil) into .venv if missing

bench-aggregation: install $(BENCH_STAMP) ## aggregation time and peak memory: FedAvg (fedkube streaming vs Flower vs naive), median, trimmed mean, Krum (BENCH_AGGREGATION_ARGS="--clients 10 --params 100000000")
	$(PY) bench/aggregation.py $(BENCH_AGGREGATION_ARGS)

# Not in BENCH_TARGETS: it trains for about ten minutes and rewrites the committed results.
bench-learning: install $(BENCH_STAMP) ## learning quality: every strategy on Dirichlet(0.1) digits, clean and with 2/10 poisoned clients, next to Flower; writes bench/results/learning.{md,png} (BENCH_LEARNING_ARGS=--quick: smoke run)
	$(PY) bench/learning.py $(BENCH_LEARNING_ARGS)

BENCH_TARGETS += bench-dp
BENCH_DP_ARGS ?=
.PHONY: bench-dp
bench-dp: install ## dpfedavg's cost over FedAvg with clipping: one round's time and peak memory (BENCH_DP_ARGS="--clients 4 --params 20000000")
	$(PY) bench/dp_overhead.py $(BENCH_DP_ARGS)

BENCH_TARGETS += bench-fsdp

.PHONY: bench-fsdp
bench-fsdp: install ## FSDP vs DDP client on CPU: peak memory per rank for a model 4x a rank's share (BENCH_FSDP_ARGS="--params 32000000 --ranks 4")
	$(PY) bench/fsdp_memory.py $(BENCH_FSDP_ARGS)
