# RS Lab: setup, test, demo, package, install.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/python3.11/site-packages
PLUGIN_NAME := rslab
QGIS_CONFIG ?= $(HOME)/.local/share/QGIS/QGIS3
QGIS_PLUGINS := $(QGIS_CONFIG)/profiles/default/python/plugins
PYTEST_ARGS ?=
export QT_QPA_PLATFORM ?= offscreen
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: help setup test demo bench package install uninstall clean

help:
	@echo "make setup    Debian packages (as root), .venv with --system-site-packages, pinned pip packages"
	@echo "make test     setup, then the whole test suite headless"
	@echo "make demo     change detection (AR-CDNet, default weights) on a bundled LEVIR-CD pair, via qgis_process: demo/"
	@echo "make bench    bench/tiling.py, change_detection.py, anomaly.py, anomaly_peaks.py, anomaly_mask.py, responsiveness.py (the others: see README)"
	@echo "make install  link this checkout into the default QGIS profile as '$(PLUGIN_NAME)' and enable it"
	@echo "make package  dist/$(PLUGIN_NAME)-VERSION.zip for the QGIS plugin repository"

setup: $(VENV)/.setup-done

# constraints-lock.txt: the versions of what the requirements pull in unnamed, so a fresh machine gets the
# set the suite passes with (the plugin's own installer keeps to constraints.txt alone)
$(VENV)/.setup-done: requirements.txt requirements-dev.txt constraints.txt constraints-lock.txt core/dependencies.py scripts/system_packages.sh
	bash scripts/system_packages.sh
	RSLAB_PIP_ARGS="-c constraints-lock.txt $${RSLAB_PIP_ARGS:-}" $(PYTHON_SYSTEM) core/dependencies.py install $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt -c constraints-lock.txt
	ln -sfn "$(CURDIR)" "$(SITE)/$(PLUGIN_NAME)"
	$(PY) -c "import numpy, sys; assert numpy.__version__.startswith('1.'), numpy.__version__; import torch, qgis.core, rasterio, $(PLUGIN_NAME).core"
	touch $@

# pytest's exit code 5 (no test collected) is a failure, said as such (make would only report "Error 5")
test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$code

DEMO_PROFILE := build/qgis-demo-profile
SAMPLES := resources/samples
# where make demo writes (the test suite points it at a temporary folder); it replaces only its own files
# there, and reads copies of the bundled pair in its rslab-demo-inputs/ (QGIS writes .aux.xml beside the
# rasters it opens); nothing else in the folder is touched
DEMO ?= demo
DEMO_INPUTS = $(DEMO)/rslab-demo-inputs
DEMO_PAIR := levir_test_7_A.png levir_test_7_B.png levir_test_7_label.png

demo: setup
	rm -rf "$(DEMO_PROFILE)" && mkdir -p "$(DEMO_INPUTS)" "$(DEMO_PROFILE)/profiles/default/python/plugins"
	cd "$(DEMO)" && rm -f change.tif probability.tif uncertainty.tif report.json quicklook.png qgis_process.log
	cd "$(DEMO_INPUTS)" && rm -f $(foreach name,$(DEMO_PAIR),$(name) $(name).aux.xml)
	cp $(foreach name,$(DEMO_PAIR),$(SAMPLES)/$(name)) "$(DEMO_INPUTS)"
	ln -sfn "$(CURDIR)" "$(DEMO_PROFILE)/profiles/default/python/plugins/$(PLUGIN_NAME)"
	QGIS_CUSTOM_CONFIG_PATH="$(CURDIR)/$(DEMO_PROFILE)" /usr/bin/qgis_process.bin plugins enable $(PLUGIN_NAME) >/dev/null
	QGIS_CUSTOM_CONFIG_PATH="$(CURDIR)/$(DEMO_PROFILE)" /usr/bin/qgis_process.bin run rslab:detect_changes -- \
	  BEFORE="$(DEMO_INPUTS)/levir_test_7_A.png" AFTER="$(DEMO_INPUTS)/levir_test_7_B.png" \
	  REFERENCE="$(DEMO_INPUTS)/levir_test_7_label.png" METHOD=0 THRESHOLD=0.5 \
	  OUTPUT_CHANGE="$(DEMO)/change.tif" OUTPUT_PROBABILITY="$(DEMO)/probability.tif" \
	  OUTPUT_UNCERTAINTY="$(DEMO)/uncertainty.tif" OUTPUT_REPORT="$(DEMO)/report.json" > "$(DEMO)/qgis_process.log"
	$(PY) scripts/quicklook.py "$(DEMO_INPUTS)/levir_test_7_A.png" "$(DEMO_INPUTS)/levir_test_7_B.png" \
	  "$(DEMO)/change.tif" "$(DEMO)/uncertainty.tif" "$(DEMO)/quicklook.png" --report "$(DEMO)/report.json"

bench: setup
	$(PY) bench/tiling.py
	$(PY) bench/change_detection.py
	$(PY) bench/anomaly.py
	$(PY) bench/anomaly_peaks.py
	$(PY) bench/anomaly_mask.py
	$(PY) bench/responsiveness.py

install:
	mkdir -p "$(QGIS_PLUGINS)"
	ln -sfn "$(CURDIR)" "$(QGIS_PLUGINS)/$(PLUGIN_NAME)"
	QT_QPA_PLATFORM=offscreen QGIS_CUSTOM_CONFIG_PATH="$(QGIS_CONFIG)" /usr/bin/qgis_process.bin plugins enable $(PLUGIN_NAME)
	@echo "RS Lab linked into $(QGIS_PLUGINS)/$(PLUGIN_NAME) and enabled"

uninstall:
	rm -f "$(QGIS_PLUGINS)/$(PLUGIN_NAME)"

package:
	$(PYTHON_SYSTEM) scripts/package.py dist

clean:
	rm -rf $(VENV) dist .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
