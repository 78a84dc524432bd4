#!/bin/bash
# tinynet: the pod network of the kind nodes, in place of kindnetd (whose
# source the Go module proxy does not serve). Same result as kindnetd for a
# single-stack IPv4 cluster without NetworkPolicy:
#   * writes the ptp + host-local CNI conflist for this node's spec.podCIDR
#     (containerd picks it up; pods start once it exists);
#   * routes every other node's pod CIDR via that node's InternalIP (all nodes
#     share one docker bridge, so that is all multi-node traffic needs).
# It polls the API server every 5 s with curl + jq and its service account.
set -u
sa=/var/run/secrets/kubernetes.io/serviceaccount
# kind patches CONTROL_PLANE_ENDPOINT in (the manifest says "kindly patch"):
# the Service VIP only works once kube-proxy runs, which waits for the network.
api=https://${CONTROL_PLANE_ENDPOINT:-$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT}
node=${NODE_NAME:?NODE_NAME is not set}
conf=${CNI_CONF_DIR:-/etc/cni/net.d}/10-kindnet.conflist

say() { echo "$(date -u +%FT%TZ) $*"; }

# name <TAB> podCIDR <TAB> InternalIP, one line per node.
nodes() {
  curl -sf --max-time 10 --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
    "$api/api/v1/nodes" |
    jq -r '.items[] | [.metadata.name, (.spec.podCIDR // ""),
      ([.status.addresses[]? | select(.type == "InternalIP") | .address][0] // "")] | @tsv'
}

write_conf() {
  cat >"$conf.tmp" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "kindnet",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": true,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "$1" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
  mv "$conf.tmp" "$conf"
}

done_cidr=""
while :; do
  if list=$(nodes); then
    while IFS=$'\t' read -r name cidr ip; do
      [ -n "$cidr" ] || continue
      if [ "$name" = "$node" ]; then
        if [ "$cidr" != "$done_cidr" ]; then
          write_conf "$cidr" && done_cidr=$cidr && say "wrote $conf for $cidr"
        fi
      elif [ -n "$ip" ]; then
        ip route replace "$cidr" via "$ip" || say "route $cidr via $ip failed"
      fi
    done <<<"$list"
  else
    say "API server $api not reachable yet"
  fi
  sleep 5
done
