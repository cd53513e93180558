# Quick start: `make run` (train, evaluate and export on the bundled sample) and `make test`.
# Each target creates the virtual environment and installs the package when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow benchmark benchmark-quick lint ci

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kerasrnn run --data sample --out runs/quickstart --resume --quiet

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

ci: lint test

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The README's tables. Full scale: hours on 2 cores (full MNIST and Fashion-MNIST, 3 seeds);
# JSON lands in $(BENCH_OUT). `make benchmark-quick`: the same scripts on the sample, minutes.
BENCH_OUT ?= runs/benchmarks
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
# kerasrnn before the speed work, which the gated cells' speed rows are measured against.
BASELINE ?= $(BENCH_OUT)/before-speed-work

benchmark: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(BIN)/python benchmarks/training_speed.py --data mnist --levers --epochs 4 --runs 2 \
		--cells simple elman --json $(BENCH_OUT)/training_speed_plain.json
	test -d $(BASELINE) || git worktree add --detach $(BASELINE) d8743d6
	$(BIN)/python benchmarks/training_speed.py --data mnist --levers --epochs 4 --runs 2 \
		--cells lstm gru --baseline $(BASELINE) --json $(BENCH_OUT)/training_speed_gated.json
	$(BIN)/python benchmarks/accuracy.py --data mnist --json $(BENCH_OUT)/accuracy_mnist.json
	$(BIN)/python benchmarks/accuracy.py --data mnist --cells gru --weight-decay 0.05 \
		--json $(BENCH_OUT)/accuracy_mnist_gru_wd.json
	$(BIN)/python benchmarks/accuracy.py --data fashion --data-dir $(FASHION_DIR) \
		--cells elman,simple --epochs 40 --weight-decay 0.05 \
		--json $(BENCH_OUT)/accuracy_fashion_plain.json
	$(BIN)/python benchmarks/accuracy.py --data fashion --data-dir $(FASHION_DIR) \
		--cells lstm,gru --weight-decay 0.05 --json $(BENCH_OUT)/accuracy_fashion_gated.json
	$(BIN)/python benchmarks/accuracy.py --data fashion --data-dir $(FASHION_DIR) \
		--cells gru --layers 2 --weight-decay 0.05 \
		--json $(BENCH_OUT)/accuracy_fashion_gru_2_layers.json
	$(BIN)/python benchmarks/accuracy.py --data fashion --data-dir $(FASHION_DIR) \
		--cells lstm --layers 2 --weight-decay 0.05 --shift 1 --epochs 30 \
		--json $(BENCH_OUT)/accuracy_fashion_lstm_2_layers_shift.json
	for view in pixels permuted; do \
		$(BIN)/python benchmarks/accuracy.py --data mnist --view $$view --cells lmu --units 512 \
			--hidden 256 --dropout 0.2 --activation relu --epochs 10 --int8 \
			--json $(BENCH_OUT)/accuracy_lmu_$$view.json || exit 1; \
	done
	$(BIN)/python benchmarks/accuracy.py --data mnist --view pixels --cells gru --seeds 0 \
		--epochs 1 --seconds 86 --json $(BENCH_OUT)/accuracy_gru_pixels.json
	$(BIN)/python benchmarks/accuracy.py --data mnist --view permuted --cells gru --seeds 0 \
		--epochs 1 --seconds 115 --json $(BENCH_OUT)/accuracy_gru_permuted.json
	$(BIN)/python benchmarks/export_sizes.py
	$(BIN)/python benchmarks/int8_agreement.py
	$(BIN)/python benchmarks/firmware_sizes.py
	$(BIN)/python benchmarks/edge_latency.py --data mnist --cells simple elman lstm gru --units 64 \
		--epochs 3 --threads 2 --json $(BENCH_OUT)/edge_latency_64.json
	$(BIN)/python benchmarks/edge_latency.py --data mnist --cases defaults --cells simple elman \
		lstm gru --units 64 --epochs 3 --threads 2 --seeds 1 2 3 4 \
		--json $(BENCH_OUT)/edge_latency_64_seeds.json
	$(BIN)/python benchmarks/edge_latency.py --data mnist --recipe --cases defaults \
		--cells elman lstm --units 128 --threads 2 --json $(BENCH_OUT)/edge_latency_128_recipe.json

benchmark-quick: $(STAMP)
	$(BIN)/python benchmarks/training_speed.py --quick
	$(BIN)/python benchmarks/accuracy.py --quick
	$(BIN)/python benchmarks/export_sizes.py --quick
	$(BIN)/python benchmarks/int8_agreement.py --quick
	$(BIN)/python benchmarks/firmware_sizes.py --quick
	$(BIN)/python benchmarks/edge_latency.py --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
