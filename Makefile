# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: with it in place pip never resolves a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# insightface's own requirements pull the GUI OpenCV wheel, which clashes with the headless
	# one; everything it needs for ONNX recognition models is already installed above.
	$(BIN)/pip install -q --no-deps insightface==2.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/idcrafter demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) outputs
