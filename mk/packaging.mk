# Packaging: the generated CRD, the Helm chart, the container images.
.PHONY: crds events-doc verify helm-lint hadolint images images-tools images-test-base images-optional images-test

FEDKUBE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fedkube
HELM ?= $(FEDKUBE_CACHE)/bin/helm/helm
IMAGE_PREFIX ?= fedkube
FEDKUBE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GENERATED := crds charts/fedkube/crds docs/events.md

crds: install ## regenerate crds/federatedjob.yaml and the chart's copy from fedcore/spec.py
	$(PY) -m fedop.crd

events-doc: install ## regenerate docs/events.md (Event and condition reasons) from operator/fedop/catalogue.py
	$(PY) -m fedop.events_doc

verify: crds events-doc ## regenerate generated files and fail when they differ from what git has
	@if [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then \
	  git status --short -- $(GENERATED); git --no-pager diff --stat -- $(GENERATED); \
	  echo "generated files are stale: commit the output of 'make crds events-doc'" >&2; exit 1; \
	fi
	@echo "generated files are up to date"

$(HELM):
	@tests/cluster/build-binaries.sh helm

helm-lint: $(HELM) ## helm lint the chart (strict) and render it with default values
	$(HELM) lint --strict charts/fedkube
	$(HELM) template fedkube charts/fedkube --kube-version 1.34.0 >/dev/null

hadolint: install ## lint the Dockerfiles in images/
	$(VENV)/bin/hadolint images/operator.Dockerfile images/runtime.Dockerfile

IMAGE_BUILD := images/build.sh $(if $(STAND_IN_BASES),--stand-in-bases)

images: ## build the operator and runtime images (Docker if an engine answers, else podman) and save them as archives in the cache (images/CONTRACT.md); STAND_IN_BASES=1: on local Debian bases, no registry
	@$(IMAGE_BUILD)

images-tools: ## install podman, buildah, runc and debootstrap with apt-get (root; what `make images` needs without Docker)
	@images/install-tools.sh

images-test-base: ## build the stand-in base images (Debian + Python, and + torch from PyPI) that `make test` builds the images on
	@images/build.sh --bases-only

images-optional: ## as `make images STAND_IN_BASES=1`, but without podman or Docker only warn (the image tests then skip) unless FEDKUBE_E2E=required
	@images/build.sh --optional --stand-in-bases

images-test: install images-optional ## build the images on the stand-in bases and run the image tests
	$(PY) -m pytest tests/images $(PYTEST_ARGS)

.PHONY: test-images test-containers containers-setup binaries-test-optional
test-images: images-test ## the image lane: both images built (stand-in bases) and run as the operator runs pods

containers-setup: images-tools realnode-setup ## install what the container lanes need with apt-get (root): podman, buildah, runc, debootstrap, containerd, iptables, conntrack

# `make test` sets up what it needs side by side: the Go binaries take the CPU for ~20 min cold,
# while .venv's install and the image builds mostly wait on the network and the disk (an image
# build: 6.3 CPU-min in 11.4 min), so together they take little longer than the Go builds
# alone. All three are cached (instant warm).
test-prerequisites: ## set up .venv, the Go binaries and the images side by side (what `make test` runs first)
	@$(MAKE) --no-print-directory -j3 install binaries-test-optional images-optional

binaries-test-optional: binaries-optional
	@if command -v containerd >/dev/null 2>&1 || [ "$${FEDKUBE_E2E:-}" = required ]; then \
	  tests/cluster/build-binaries.sh --optional kubernetes-node cni coredns >/dev/null; fi

# The container lanes after the main suite, each its own pytest session (tests/conftest.py).
# Without their tools they skip, saying what to install, unless FEDKUBE_E2E=required.
test-lanes: install ## the container lanes as `make test` runs them: the image tests, then the real-node e2e
	@status=0; for lane in tests/images tests/realnode; do \
	  $(PY) -m pytest $$lane --durations=5 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ] && [ -n "$(strip $(PYTEST_ARGS))" ]; then rc=0; fi; \
	  [ $$rc = 0 ] || status=$$rc; \
	done; exit $$status

test-containers: ## the container lanes on their own: tools (apt-get), the images and their tests, then the real-node e2e (cold: ~21 min on 2 cores and ~20 GB of disk once; see tests/cluster/README.md)
	@$(MAKE) --no-print-directory containers-setup
	@$(MAKE) --no-print-directory test-images
	@$(MAKE) --no-print-directory test-realnode
