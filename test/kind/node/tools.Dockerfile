# The userspace kube-proxy and tinynet need (iptables/nft, conntrack, ip,
# curl + jq), on the project's local Debian image. Build containers reach the
# Debian mirrors, so plain apt-get works without a registry.
ARG BASE=tarn-local/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables nftables conntrack ipset iproute2 kmod ca-certificates curl jq \
 && rm -rf /var/lib/apt/lists/*
