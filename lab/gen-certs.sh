#!/usr/bin/env bash
# Test CA plus one server certificate per lab node (run by scripts/cluster up, as root).
# usage: gen-certs.sh CERT_DIR OWNER NAME=IP...
# Existing files are kept, so certificates (and the CA that tests trust) stay stable
# across up/down/wipe; delete CERT_DIR to start over.
set -euo pipefail
dir=$1 owner=$2; shift 2
umask 077
mkdir -p "$dir"
cd "$dir"

if [[ ! -s ca.crt || ! -s ca.key ]]; then
  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=pgfront lab test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
chmod 0644 ca.crt

for spec in "$@"; do
  name=${spec%%=*} ip=${spec#*=}
  # Regenerate when missing or when the CA was replaced after the cert was issued.
  if [[ -s $name.crt && -s $name.key ]] && openssl verify -CAfile ca.crt "$name.crt" >/dev/null 2>&1; then
    continue
  fi
  openssl req -new -nodes -newkey rsa:2048 -sha256 -keyout "$name.key" -out "$name.csr" \
    -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -out "$name.crt" -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:$ip,DNS:localhost,DNS:$name") 2>/dev/null
  rm -f "$name.csr"
done

# PostgreSQL insists on a server key owned by its user with mode 0600; the CA key stays root's.
for spec in "$@"; do
  name=${spec%%=*}
  chown "$owner:" "$name.key" "$name.crt"
  chmod 0600 "$name.key"
  chmod 0644 "$name.crt"
done
chmod 0755 .
