# Tarn — make targets. Tests need root (loop devices, mounts).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
IMAGE ?= tarn:$(VERSION)
GOTEST_FLAGS ?= -count=1 -timeout 40m

.PHONY: all build vet deps test unit integration sanity demo image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tarn ./cmd/tarn

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# Installs the OS packages the tests use, only when something is missing.
deps:
	@bash test/install-deps.sh

# Everything: unit, integration (real loop devices, filesystems, mounts)
# and csi-sanity on reflink and non-reflink pools.
test: deps vet
	$(GO) test $(GOTEST_FLAGS) ./...

unit: deps
	$(GO) test $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v -e /sanity -e /test/)

integration: deps
	$(GO) test $(GOTEST_FLAGS) ./test/...

sanity: deps
	$(GO) test $(GOTEST_FLAGS) -v -run 'TestSanity$$' ./sanity/

# The main job: start tarn on a temporary pool and drive a whole volume
# lifecycle through the CSI API, printing each step and its time.
demo: deps build
	$(GO) run ./test/demo --tarn bin/tarn

image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin
