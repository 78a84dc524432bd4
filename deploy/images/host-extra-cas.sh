#!/usr/bin/env bash
# Write to OUTDIR, one file each, the CA certificates this machine trusts on
# top of Debian's ca-certificates set: a company or sandbox proxy that re-signs
# HTTPS, for example. The Go builder image trusts them too, so that Go reaches
# the module proxy from inside a container just as it does on the host. On a
# machine with only the distribution's CAs this writes nothing. Prints how
# many it wrote.
#   host-extra-cas.sh OUTDIR
set -euo pipefail
out=$1
mkdir -p "$out"
bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
if [ ! -s "$bundle" ]; then
  echo 0
  exit 0
fi
# Certificates are compared by their base64 body: the bundle is the
# concatenation of the distribution's PEM files plus whatever was added.
find /usr/share/ca-certificates -name '*.crt' -print0 2>/dev/null |
  xargs -0 -r cat |
  awk -v out="$out" -v bundle="$bundle" '
    /-----BEGIN CERTIFICATE-----/ { body = ""; pem = $0 "\n"; inside = 1; next }
    /-----END CERTIFICATE-----/ {
      pem = pem $0 "\n"; inside = 0
      if (FILENAME == bundle) {
        if (!(body in distro) && !(body in seen)) {
          seen[body] = 1; n++
          f = sprintf("%s/build-host-%d.crt", out, n)
          printf "%s", pem > f; close(f)
        }
      } else distro[body] = 1
      next
    }
    inside { gsub(/[ \t\r]/, ""); body = body $0; pem = pem $0 "\n" }
    END { print n + 0 }
  ' - "$bundle"
