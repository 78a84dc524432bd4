ARG BASE=tarn-local/kind-tools:bookworm
FROM ${BASE}
COPY tinynet.sh /usr/local/bin/tinynet
ENTRYPOINT ["/usr/local/bin/tinynet"]
