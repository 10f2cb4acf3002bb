# Two entry points that work on a fresh machine (they bootstrap .venv themselves):
#   make demo   convert the bundled samples (digits classifier, shapes detector) for device profiles and run them
#   make test   install the dev extras and run the whole test suite, then the int8 tests as a CPU without VNNI
#               runs them (`tools/avx2_test.py --ci`, QEMU's Haswell) and `make device-test` (arm64 under QEMU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out

.PHONY: demo test test-fast device-test avx2-test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-all: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-all

demo: $(VENV)/.installed-all
	$(BIN)/edgeinfer convert samples/digits/digits.onnx \
		--profile generic-x86-64 --profile raspberry-pi-4 \
		--calib samples/digits/calib -o $(OUT) --force
	$(BIN)/edgeinfer run $(OUT)/digits-generic-x86-64 samples/digits/images/*.png --top-k 3
	$(BIN)/edgeinfer run $(OUT)/digits-raspberry-pi-4 samples/digits/images/*.png --top-k 1
	$(BIN)/edgeinfer convert samples/detector/shapes_det.onnx --profile generic-x86-64 \
		--calib samples/detector/calib --verify-data samples/detector/val -o $(OUT) --force
	$(BIN)/edgeinfer run $(OUT)/shapes_det-generic-x86-64 samples/detector/images/* --save-vis $(OUT)/vis
	$(BIN)/edgeinfer eval $(OUT)/shapes_det-generic-x86-64 samples/detector/val

test: $(VENV)/.installed-dev
	bash tools/setup_tflite214_venv.sh
	bash tools/setup_verifier_venvs.sh
	$(BIN)/python -m pytest -q -m "slow or not slow" tests
	$(BIN)/python tools/avx2_test.py --ci
	$(MAKE) --no-print-directory device-test

# the runtime on an emulated arm64 (Cortex-A72 / A76 under qemu-user) vs this host; cached in ~/.cache/edgeinfer-device
device-test: $(VENV)/.installed-dev
	$(BIN)/python tools/device_test.py

# the int8-sensitive tests as an x86-64 CPU without VNNI runs them (QEMU's Haswell), on a VNNI host; --all: every test
avx2-test: $(VENV)/.installed-dev
	$(BIN)/python tools/avx2_test.py $(ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(OUT) build dist *.egg-info
