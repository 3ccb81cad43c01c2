# The two commands of the README: `make demo` and `make test`. Each creates .venv and
# installs what it needs (ffmpeg too, when run as root on Debian/Ubuntu).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORK ?= work/demo
# The demo's training run: small enough for 2 CPU cores in a few minutes.
DEMO_TRAIN_ARGS ?= --weights none --epochs 4 --crop-size 112 --num-frames 4 --batch-size 8 --workers 2 --lr 1e-3

.PHONY: demo demo-two-stream test test-quick lint format ffmpeg clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || [ -n "$$EPIC_FFMPEG" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; \
	  else \
	    echo "ffmpeg not found: install it (apt-get install ffmpeg / module load FFmpeg) or set EPIC_FFMPEG and EPIC_FFPROBE"; exit 1; \
	  fi; }

test: $(BIN)/.installed ffmpeg
	$(BIN)/python -m pytest -q

# The developers' loop: the quick tests of every package, about a minute (docs/testing.md).
test-quick: $(BIN)/.installed ffmpeg
	$(BIN)/python -m pytest -q -m "not slow and not slurm and not gpu"

demo: $(BIN)/.installed ffmpeg
	WORK=$(WORK) BIN=$(BIN) DEMO_TRAIN_ARGS="$(DEMO_TRAIN_ARGS)" bash demo.sh

# The demo and then the two-stream half: flow tars, a flow store, a flow stream, fusion.
demo-two-stream: $(BIN)/.installed ffmpeg
	TWO_STREAM=1 WORK=$(WORK) BIN=$(BIN) DEMO_TRAIN_ARGS="$(DEMO_TRAIN_ARGS)" bash demo.sh

lint: $(BIN)/.installed
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/pip install -q ruff
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(WORK)
