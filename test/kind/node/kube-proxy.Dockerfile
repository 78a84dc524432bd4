# kube-proxy with iptables userspace. The wrapper is registered as the
# iptables/ip6tables alternative (as upstream's iptables-wrapper-installer.sh
# does on Debian) and, on first use, switches the alternatives to the backend
# the node uses.
ARG BASE=tarn-local/kind-tools:bookworm
FROM ${BASE}
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN chmod 0755 /usr/sbin/iptables-wrapper \
 && for v in iptables ip6tables; do \
      update-alternatives --install /usr/sbin/$v $v /usr/sbin/iptables-wrapper 100 \
        --slave /usr/sbin/$v-restore $v-restore /usr/sbin/iptables-wrapper \
        --slave /usr/sbin/$v-save $v-save /usr/sbin/iptables-wrapper; \
    done
COPY kube-proxy /usr/local/bin/kube-proxy
