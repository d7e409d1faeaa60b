# Packaging: the generated CRD, the Helm chart, the container images.
.PHONY: crds events-doc verify helm-lint hadolint images

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

images: ## build the operator and runtime images with Docker (IMAGE_PREFIX=fedkube, tag = package version)
	@docker info >/dev/null 2>&1 || { \
	  echo "make images needs a running Docker engine with BuildKit (docker buildx); build the images on a machine that has one" >&2; \
	  exit 1; }
	docker buildx build -f images/operator.Dockerfile -t $(IMAGE_PREFIX)/operator:$(FEDKUBE_VERSION) --load .
	docker buildx build -f images/runtime.Dockerfile -t $(IMAGE_PREFIX)/runtime:$(FEDKUBE_VERSION) --load .
