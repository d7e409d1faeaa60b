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
	@$(PY) -c 'import flwr, psutil, ray' 2>/dev/null || $(PIP) install --progress-bar off -c constraints.txt -e '.[bench]'
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

BENCH_TARGETS += bench-disk-aggregation
BENCH_DISK_AGGREGATION_ARGS ?=
.PHONY: bench-disk-aggregation
bench-disk-aggregation: install minio ## FedAvg (or --strategy fedavgm/fedadam/fedyogi/fedadagrad/dpfedavg) through MinIO with the sum in memory vs on disk (spec.aggregator.accumulator): peak RSS per model, close-after-last-update vs one download + one upload (BENCH_DISK_AGGREGATION_ARGS="--params 1000000000 --clients 10"; refuses to start without the disk it needs)
	$(PY) bench/disk_aggregation.py $(BENCH_DISK_AGGREGATION_ARGS)

BENCH_TARGETS += bench-round-overhead
BENCH_ROUND_OVERHEAD_ARGS ?=
.PHONY: bench-round-overhead
bench-round-overhead: install $(BENCH_STAMP) ## a round's fixed cost and start-up to round 1: fedkube run (fork server, and without) vs Flower's simulation engine, 10 clients, tiny model (BENCH_ROUND_OVERHEAD_ARGS="--clients 10 --rounds 10 --repeats 3")
	$(PY) bench/round_overhead.py $(BENCH_ROUND_OVERHEAD_ARGS)

# Not in BENCH_TARGETS: it trains (digits, then the LoRA task) for several minutes.
BENCH_UPDATE_DTYPE_ARGS ?=
.PHONY: bench-update-dtype
bench-update-dtype: install ## accuracy cost of strategy.updateDtype (float32, bfloat16, int8) on digits and the LoRA task (BENCH_UPDATE_DTYPE_ARGS="--seeds 0")
	$(PY) bench/update_dtype.py --task digits $(BENCH_UPDATE_DTYPE_ARGS)
	$(PY) bench/update_dtype.py --task causal_lm $(BENCH_UPDATE_DTYPE_ARGS)

BENCH_TARGETS += bench-fsdp

.PHONY: bench-fsdp
bench-fsdp: install ## FSDP vs DDP client on CPU: peak memory per rank for a model 4x a rank's share (BENCH_FSDP_ARGS="--params 64000000 --depth 36 --ranks 4")
	$(PY) bench/fsdp_memory.py $(BENCH_FSDP_ARGS)
