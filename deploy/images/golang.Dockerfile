# A stand-in for the official golang:<ver>-bookworm image, built from the host's
# Go toolchain (base-images.sh streams GOROOT into the context as go/).
# Legacy-builder syntax only: no BuildKit is needed to build it.
ARG BASE
FROM ${BASE}
ARG GO_VERSION
ARG GOPROXY
ARG GOSUMDB
# CAs the build host trusts beyond Debian's set (host-extra-cas.sh); the
# directory is empty on an ordinary machine.
COPY extra-cas/ /usr/local/share/ca-certificates/build-host/
RUN update-ca-certificates >/dev/null
COPY go /usr/local/go
# GOTOOLCHAIN=local: never download another toolchain (the go line of a
# go.mod newer than this one fails instead). GOPROXY/GOSUMDB are the host's
# at the time the image was built.
ENV GOLANG_VERSION=${GO_VERSION} \
    GOTOOLCHAIN=local \
    CGO_ENABLED=0 \
    GOFLAGS=-mod=mod \
    GOPROXY=${GOPROXY} \
    GOSUMDB=${GOSUMDB} \
    GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /go/bin /go/src && chmod -R 1777 /go
WORKDIR /go
LABEL org.opencontainers.image.description="Go ${GO_VERSION} on Debian (local stand-in for golang:bookworm)"
