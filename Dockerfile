# Tarn's image: the static tarn binary and the programs it runs (mount,
# mkfs, fsck, resize, blkid, and for the LVM backend lvm and thin_check:
# deploy/images/runtime-programs), with the libraries and data files they
# need, on an empty base. No shell, no package manager: the node plugin is
# privileged, and whoever reaches its container finds nothing to run
# beyond what Tarn runs. The programs come from Debian packages installed
# in a throw-away stage, which deploy/images/runtime-rootfs.sh copies from.
#
# Both base images are build arguments so that a machine without a registry
# can build from images it has imported (docker load) under other names:
#
#   docker build \
#     --build-arg GO_IMAGE=local/golang:1.26 \
#     --build-arg BASE_IMAGE=local/debian:bookworm-slim .
#
# Offline, the builder must also find the modules (a GO_IMAGE whose module
# cache holds them, with GOFLAGS=-mod=mod and GOPROXY=off), and BASE_IMAGE
# must already hold the runtime packages: apt-get is then skipped.
#
# There is deliberately no "# syntax=" line: it would make BuildKit pull a
# frontend image, which fails offline; the built-in frontend knows
# RUN --mount.

ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
# The golang images set GOTOOLCHAIN=local, so GO_IMAGE must be at least the
# go line of go.mod; an older one fails here rather than downloading.
WORKDIR /src
# Passed through when given, so that an offline build can point Go at its
# own module source.
ARG GOPROXY
ARG GOFLAGS
# Modules in their own layer, keyed on go.mod and go.sum only: a source
# change does not download them again. No cache mount here, since it would
# hide a module cache that an offline GO_IMAGE carries.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/tarn ./cmd/tarn

FROM ${BASE_IMAGE} AS rootfs
# Only what is missing is installed, so that a BASE_IMAGE prepared with the
# packages builds without a network.
RUN set -eu; \
    missing=""; \
    for p in e2fsprogs xfsprogs util-linux mount lvm2 thin-provisioning-tools; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY deploy/images/runtime-programs deploy/images/runtime-rootfs.sh /assemble/
RUN bash /assemble/runtime-rootfs.sh /assemble/runtime-programs /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
COPY --from=build /out/tarn /tarn
# The programs are looked up in PATH (mount-utils runs them by name), and
# an image from scratch has none of its own.
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
ARG VERSION=dev
LABEL org.opencontainers.image.title="tarn" \
      org.opencontainers.image.description="Tarn CSI driver for node-local volumes" \
      org.opencontainers.image.version="${VERSION}"
ENTRYPOINT ["/tarn"]
CMD ["serve"]
