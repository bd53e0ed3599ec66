# Kubernetes manifests (manifests/): a kustomize base and the overlays dev-cpu and prod-gpu.
#   make manifests          re-render each overlay's inferenceservice.yaml with the command in its first line
#   make manifests-test     kustomize builds, kubernetes-validate, the kserve SDK round trip, checkov
#   make checkov-venv       checkov in its own venv: its pins (packaging, networkx, ...) clash with the main venv's
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION ?= 3.3.30
OVERLAYS := $(wildcard manifests/overlays/*/inferenceservice.yaml)

.PHONY: manifests manifests-test checkov-venv

$(CHECKOV_STAMP):
	test -d $(CHECKOV_VENV) || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

checkov-venv: $(CHECKOV_STAMP)

# tests/orchestration/test_manifests.py runs checkov from $(CHECKOV_VENV) (and skips without it).
test: checkov-venv

# The header's command is the render's own record of how it was made; run it again, into the file.
manifests: install
	@for f in $(OVERLAYS); do \
	  cmd=$$(sed -n '1s/^# Rendered by `\(.*\)`; do not edit by hand\.$$/\1/p' $$f); \
	  test -n "$$cmd" || { echo "$$f: no render command in its first line"; exit 1; }; \
	  echo "$$cmd -o $$f"; PATH="$(CURDIR)/$(BIN):$$PATH" eval "$$cmd -o $$f" || exit 1; \
	done

manifests-test: install checkov-venv
	$(BIN)/python -m pytest -q tests/orchestration/test_manifests.py tests/steps/test_deploy_model.py
