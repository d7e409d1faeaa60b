# Object store: benchmark against a real MinIO (the tests are in `make unit` / `make integration`).
.PHONY: bench-store
BENCH_TARGETS += bench-store

bench-store: install minio ## S3 store throughput: 256 MiB up/down a local MinIO, multipart vs single-part
	$(PY) bench/store_throughput.py --mib 256
