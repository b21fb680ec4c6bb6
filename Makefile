# The two commands of the README:
#   make demo   set up, download the weights and a sample CT, segment it, write the labelmap and a preview PNG
#               (offline: make demo WEIGHTS=/path/model.pt INPUT=/path/ct.nii.gz)
#   make test   set up and run the test suite (offline; random-weights checkpoints)
# Everything installs into .venv, so nothing touches the system's Python.

PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own, so that pip never replaces it with another build while
# resolving the other packages. On a GPU machine pick the build you need with TORCH=...
TORCH ?= torch==2.13.0
OUT ?= demo-output
# Slicer's public sample CT "CTChest" (SampleData), pinned by its SHA-256.
SAMPLE_URL ?= https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/4507b664690840abb6cb9af2d919377ffc4ef75b167cb6fd0f747befdb12e38e
SAMPLE_SHA256 ?= 4507b664690840abb6cb9af2d919377ffc4ef75b167cb6fd0f747befdb12e38e
LABELS ?= everything
WEIGHTS ?=
INPUT ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-full bench bench-gpu clean

$(STAMP): pyproject.toml VISTA3DSlicer/VISTA3DSlicerLib/requirements.txt VISTA3DSlicer/VISTA3DSlicerLib/requirements-openvino.txt VISTA3DSlicer/VISTA3DSlicerLib/requirements-server.txt VISTA3DSlicer/VISTA3DSlicerLib/requirements-dicom.txt VISTA3DSlicer/VISTA3DSlicerLib/requirements-ray.txt Testing/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(OUT)
	@if [ -n "$(INPUT)" ]; then \
		cp "$(INPUT)" "$(OUT)/" ; \
	elif [ ! -f $(OUT)/CTChest.nrrd ]; then \
		echo "Downloading the sample CT (Slicer's CTChest)"; \
		curl -fL --retry 3 -o $(OUT)/CTChest.nrrd.part "$(SAMPLE_URL)" && \
		echo "$(SAMPLE_SHA256)  $(OUT)/CTChest.nrrd.part" | sha256sum -c - && \
		mv $(OUT)/CTChest.nrrd.part $(OUT)/CTChest.nrrd || \
		{ echo "No sample CT: without internet run 'make demo WEIGHTS=model.pt INPUT=ct.nii.gz'"; exit 1; }; \
	fi
	@if [ -z "$(WEIGHTS)" ]; then $(BIN)/vista3d weights download; fi
	$(BIN)/vista3d segment "$(if $(INPUT),$(OUT)/$(notdir $(INPUT)),$(OUT)/CTChest.nrrd)" \
		-o $(OUT)/labels.seg.nrrd --labels "$(LABELS)" $(if $(WEIGHTS),--weights "$(WEIGHTS)") \
		--preview $(OUT)/preview.png --overwrite
	@echo "Open $(OUT)/labels.seg.nrrd in 3D Slicer, or look at $(OUT)/preview.png"

# dciodvfy (Debian's dicom3tools) validates the DICOM SEG output in a test; installed here when this
# is a Debian/Ubuntu machine run as root (CI), else that test skips and says so.
DICOM3TOOLS = command -v dciodvfy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	{ apt-get install -y -qq dicom3tools >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dicom3tools; } >/dev/null 2>&1; }; } || \
	echo "dciodvfy not found (apt-get install dicom3tools): the DICOM SEG validation test will skip"

# Every test except the full-size vista3d132 runs (those take ~15 min more on 2 CPU cores).
test: $(STAMP)
	@$(DICOM3TOOLS)
	$(BIN)/python -m pytest -q -rs -m "not slow"

# Everything, with the full-size network against the bundle's pipeline (the acceptance runs).
test-full: $(STAMP)
	@$(DICOM3TOOLS)
	$(BIN)/python -m pytest -q -rs

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# The benchmarks run from the checkout (benchmarks/ is not part of the installed package).
# Issue 7's GPU figures, one after the other, on a CUDA machine (TORCH=... for its build): the bundle
# at AMP fp16 against ours, everything and 5 classes, 512³ and 333x333x603 at 0.8 mm; a 512x512x768
# volume on a GPU capped at 8 GiB; clicks; whole-volume supervoxels. Appends to BENCHMARKS.md and .json.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench.py --reference --phantom 512x512x512 --labels everything --device cuda --precisions fp16,bf16
	$(BIN)/python benchmarks/bench.py --reference --phantom 512x512x512 --labels everything --device cuda --precisions fp16 --window-batch 2
	$(BIN)/python benchmarks/bench.py --reference --phantom 512x512x512 --labels 1,3,5,6,10 --device cuda --precisions fp16
	$(BIN)/python benchmarks/bench.py --reference --phantom 333x333x603 --labels everything --device cuda --precisions fp32,fp16
	$(BIN)/python benchmarks/bench.py --reference --phantom 512x512x768 --labels everything --device cuda --precisions fp16 --gpu-memory 8
	$(BIN)/python benchmarks/bench.py --device cuda --precision fp16
	$(BIN)/python benchmarks/bench.py --clicks --device cuda --precision fp16
	$(BIN)/python benchmarks/bench.py --supervoxels 256 --device cuda --precision fp16

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis
