# Tarn — make targets. Tests need root (loop devices, mounts).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
IMAGE ?= tarn:$(VERSION)
GOTEST_FLAGS ?= -count=1 -timeout 40m

.PHONY: all build vet deps test test-vm test-race test-kind test-image fuzz unit integration sanity demo image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tarn ./cmd/tarn

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags faultinject ./pkg/faults ./cmd/tarn ./test/reliability

# Installs the OS packages the tests use, only when something is missing.
deps:
	@bash test/install-deps.sh

# Everything: unit, integration (real loop devices, filesystems, mounts),
# csi-sanity on reflink and non-reflink pools, the demo (the README's main
# command, so that it cannot rot), a short fuzz run, the
# benchmark harness at small size (so it cannot rot), the stress test under
# the race detector, Tarn's image checked for a shell and for the programs
# Tarn runs, LVM in the VM, and the e2e tests on a kind cluster.
test: deps vet
	$(GO) test $(GOTEST_FLAGS) ./...
	$(MAKE) demo
	$(MAKE) fuzz
	$(MAKE) bench-smoke
	$(MAKE) test-race
	$(MAKE) test-image
	$(MAKE) test-vm
	$(MAKE) test-kind

# The concurrent stress test again, with the race detector.
test-race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m -run 'TestStress$$' ./test/reliability/ -args -stress.duration=15s

# Tarn's image built on the local bases, then test/image on it: the files
# it holds (no shell, no package manager, no program Tarn does not run) and
# the programs of deploy/images/runtime-programs with their libraries.
test-image: images-host images-base
	@$(IMAGES_SH) tarn

# A fresh kind cluster, the e2e tests, and the cluster removed whatever
# happened (kind-down also fails if anything was left on the host).
test-kind:
	@$(MAKE) kind-up && { $(MAKE) e2e; rc=$$?; $(MAKE) kind-down || rc=1; exit $$rc; } || { $(MAKE) kind-down; exit 1; }

# The LVM backend's tests and csi-sanity against it (thin and thick), in the
# QEMU guest of test/vm: the host kernel has no device-mapper.
# test/lvmfaults kills a faultinject build of tarn at each LVM fault point.
# Verbose, so that each csi-sanity configuration's counts are printed; one
# go test for the three packages, so that sanity (the longest) runs in a VM
# of its own beside the others.
test-vm: vm-image
	CGO_ENABLED=0 $(GO) build -trimpath -tags faultinject -o _output/tarn-faultinject ./cmd/tarn
	CGO_ENABLED=0 $(GO) build -trimpath -o _output/tarn ./cmd/tarn
	CGO_ENABLED=0 TARN_TEST_FAULT_BINARY=$(CURDIR)/_output/tarn-faultinject TARN_TEST_BINARY=$(CURDIR)/_output/tarn \
		$(GO) test $(GOTEST_FLAGS) -v -exec "$(CURDIR)/test/vm/run.sh --" ./pkg/backend/lvm/ ./sanity/ ./test/lvmfaults/

# Each fuzz target for FUZZTIME (longer budgets: make fuzz FUZZTIME=10m).
FUZZTIME ?= 3s
FUZZ_TARGETS := ./pkg/backend:FuzzIDs ./pkg/backend:FuzzRoundSize \
	./pkg/backend/loop:FuzzDecodeMeta ./pkg/driver:FuzzPaginate \
	./pkg/driver:FuzzRequestPaths ./pkg/driver:FuzzParameters
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		out=$$($(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || \
			{ echo "$$out" | grep -v '^fuzz: elapsed'; exit 1; }; \
		echo "$$out" | tail -1; \
	done

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

# ---- begin: LVM test VM (test/vm) ------------------------------------------
# The host kernel has no device-mapper, so LVM tests run in a QEMU guest
# booted by test/vm/run.sh (see test/vm/README.md). Use it as go test's runner:
#   go test -exec "$(CURDIR)/test/vm/run.sh --" ./some/lvm/package/
VM_RUN := $(CURDIR)/test/vm/run.sh

.PHONY: vm-image vm-selftest

# Build the guest kernel + initramfs into the cache (a no-op when cached).
vm-image:
	@bash test/vm/build-image.sh

# LVM self-test in the guest, then exit-status propagation: a plain command
# and a go test run through -exec, passing and failing.
vm-selftest: vm-image
	@TIMEFORMAT='vm-selftest: %Rs'; time $(VM_RUN) -- test/vm/selftest.sh
	@rc=0; $(VM_RUN) -- sh -c 'echo "exiting with 3 on purpose"; exit 3' || rc=$$?; \
	  if [ $$rc -ne 3 ]; then echo "vm-selftest: FAIL: exit status $$rc, want 3"; exit 1; fi; \
	  echo "vm-selftest: exit status 3 propagated"
	TARN_VMCHECK_TOKEN=t0k3n TARN_VMCHECK_EXPECT_TOKEN=t0k3n \
	  $(GO) test -count=1 -v -exec "$(VM_RUN) --" ./test/vm/vmcheck/
	@rc=0; TARN_VMCHECK_FAIL=1 $(GO) test -count=1 -exec "$(VM_RUN) --" ./test/vm/vmcheck/ || rc=$$?; \
	  if [ $$rc -eq 0 ]; then echo "vm-selftest: FAIL: go test passed, want a failure"; exit 1; fi; \
	  echo "vm-selftest: go test failure propagated (exit $$rc)"
	@echo "vm-selftest: OK"
# ---- end: LVM test VM --------------------------------------------------------

# ---- benchmarks (test/bench; see test/bench/README.md) ----------------------
.PHONY: bench bench-smoke bench-deps
BENCH_FLAGS ?=

bench-deps:
	@bash test/bench/install-deps.sh

# Full benchmark, about 6 minutes on 2 cores as root (budget: 15): writes
# test/bench/results/latest.{json,md} and snapshot-vs-size.png. Exits 3 when
# a target is missed (the results are written all the same).
bench: deps bench-deps build
	$(GO) run ./test/bench --tarn bin/tarn --out test/bench/results $(BENCH_FLAGS)

# Every measurement once at toy size, in under 2 minutes, so the harness
# cannot rot: fails on any measurement error or leftover, never on a missed
# target.
bench-smoke: deps bench-deps build
	$(GO) run ./test/bench --tarn bin/tarn --smoke $(BENCH_FLAGS)

# The snapshot-cost rows of an LVM thin pool, measured in the test VM and
# merged into test/bench/results (run after make bench, which rewrites them).
.PHONY: bench-vm
bench-vm: vm-image
	bash test/bench/lvm-vm.sh
# ---- end of benchmarks ------------------------------------------------------

# ---- begin: local images (deploy/images; see deploy/images/README.md) -------
# Builds every image Tarn needs with no container registry: Debian base images
# (mmdebstrap), a Go builder from the host toolchain, Tarn's image, and the
# CSI sidecars from the Go module proxy. Cached: a second run takes seconds.
.PHONY: images images-host images-base images-tarn images-sidecars crds images-list images-clean
IMAGES_SH = VERSION=$(VERSION) IMAGE=$(IMAGE) bash deploy/images/images.sh

images:
	@$(IMAGES_SH) all
images-host:
	@$(IMAGES_SH) host
images-base:
	@$(IMAGES_SH) base
images-tarn:
	@$(IMAGES_SH) tarn
images-sidecars:
	@$(IMAGES_SH) sidecars
# Only the snapshot CRDs (into _output/crds), from the pinned module: no docker.
crds:
	@$(IMAGES_SH) crds
images-list:
	@$(IMAGES_SH) list
images-clean:
	@$(IMAGES_SH) clean

# The Dockerfile uses RUN --mount, which needs BuildKit; Debian's docker.io
# 20.10 client only uses it when asked (newer clients need the buildx plugin,
# which `make images-host` installs).
image: export DOCKER_BUILDKIT := 1
# ---- end: local images -------------------------------------------------------

# ---- begin: kind cluster (test/kind; see test/kind/README.md) ---------------
# A 3-node kind cluster (deploy/kind/cluster.yaml) built with no registry: the
# node image is assembled from Kubernetes built from the Go module proxy, and
# each node gets an XFS (reflink) pool at /var/lib/tarn/pool. Cached by
# version under KIND_CACHE: a second run only recreates the cluster.
.PHONY: kind-image kind-up kind-down
KIND_CACHE ?= /var/cache/tarn-kind
KIND_K8S_VERSION ?= v1.34.4
KIND_KUBECONFIG ?= $(CURDIR)/_output/kind/kubeconfig
# The cluster's kubectl (test/kind/kubectl wraps it with the kubeconfig).
KUBECTL ?= $(KIND_CACHE)/kubernetes-$(KIND_K8S_VERSION)/kubectl
KIND_SH = VERSION=$(VERSION) IMAGE=$(IMAGE) TARN_KIND_CACHE=$(KIND_CACHE) \
	K8S_VERSION=$(KIND_K8S_VERSION) KIND_KUBECONFIG=$(KIND_KUBECONFIG) bash test/kind/kind.sh

# Host setup, Kubernetes/etcd/coredns/kind binaries, node image.
kind-image: images-host images-base
	@$(KIND_SH) image

# Everything above, Tarn's and the sidecars' images, then a fresh cluster
# "tarn" with them loaded, the snapshot CRDs and deploy/overlays/kind applied
# (TARN_KIND_DEPLOY=0 stops before the overlay).
kind-up: images
	@$(KIND_SH) up

# Deletes the cluster and its pools; fails if a mount or loop device is left.
kind-down:
	@$(KIND_SH) down

# Go end-to-end tests (test/e2e, client-go) against the cluster of kind-up.
.PHONY: e2e
E2E_IMAGE ?= tarn-local/debian:bookworm-slim
E2E_TIMEOUT ?= 20m
e2e:
	TARN_E2E_KUBECONFIG=$(KIND_KUBECONFIG) TARN_E2E_IMAGE=$(E2E_IMAGE) TARN_E2E_KUBECTL=$(KUBECTL) \
		go test -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/

# Kubernetes' own "External Storage" e2e tests (k8s.io/kubernetes test/e2e,
# built from the Go module proxy) against the cluster of kind-up, with the
# test images made locally; see test/k8s-suite/README.md. Runs "ext4 xfs".
.PHONY: e2e-suite
E2E_SUITE_PROCS ?= 3
e2e-suite:
	@K8S_VERSION=$(KIND_K8S_VERSION) TARN_KIND_CACHE=$(KIND_CACHE) KIND_KUBECONFIG=$(KIND_KUBECONFIG) \
		K8S_SUITE_PROCS=$(E2E_SUITE_PROCS) bash test/k8s-suite/run.sh
# ---- end: kind cluster ---------------------------------------------------------
