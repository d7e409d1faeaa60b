# Object store: benchmarks against a real MinIO (the tests are in `make unit` / `make integration`).
.PHONY: bench-store bench-store-mc
BENCH_TARGETS += bench-store bench-store-mc
BENCH_STORE_MC_ARGS ?= --mib 1024

bench-store: install minio ## S3 store throughput: 256 MiB up/down a local MinIO, multipart vs single-part
	$(PY) bench/store_throughput.py --mib 256

bench-store-mc: install minio ## S3 store vs MinIO's `mc cp`: a 1 GiB object up and down, ratios (BENCH_STORE_MC_ARGS="--mib 1024 --repeats 3")
	$(PY) bench/store_vs_mc.py $(BENCH_STORE_MC_ARGS)
