# Container images, one Dockerfile each under images/ (build context: the repo root):
#   make images                      docker build the flagops (CUDA), serve and airflow images
#   make images IMAGE_REGISTRY=registry.example.com/ml DOCKER=podman
#   make lint-images                 hadolint every Dockerfile (no Docker engine needed)
# The tag is flagops' version, the one catalog.DEFAULT_IMAGE names; set FLAGOPS_IMAGE for the
# steps when you push somewhere else. Building needs BuildKit (RUN --mount); Docker 23+ has it on.
IMAGE_REGISTRY ?= ghcr.io/flagops
IMAGE_TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' flagops/__init__.py)
DOCKER ?= docker
# name of the image -> its Dockerfile folder
IMAGE_NAMES := flagops flagops-serve flagops-airflow
image_dir = $(patsubst flagops-%,%,$(1))

.PHONY: images lint-images $(addprefix image-,$(IMAGE_NAMES))

images: $(addprefix image-,$(IMAGE_NAMES))

$(addprefix image-,$(IMAGE_NAMES)): image-%:
	$(DOCKER) build -f images/$(call image_dir,$*)/Dockerfile --build-arg FLAGOPS_VERSION=$(IMAGE_TAG) \
	  -t $(IMAGE_REGISTRY)/$*:$(IMAGE_TAG) .

lint-images: install
	$(BIN)/hadolint images/*/Dockerfile
