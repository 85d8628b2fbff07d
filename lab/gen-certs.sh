#!/usr/bin/env bash
# The lab CA plus one certificate per lab node (run by scripts/cluster up, as root).
# usage: gen-certs.sh CERT_DIR OWNER NAME=IP...
# The lab CA is the test CA shipped in lab/tls (its key is public, see lab/tls/README.md):
# ca.crt/ca.key are copied into CERT_DIR, replacing any other CA found there, and so are
# lab/tls/probe-client.{crt,key} (pgfront's client certificate for the REST APIs). A node
# certificate is kept while it verifies against that CA, carries both serverAuth and clientAuth
# (Patroni presents it as a client certificate to the other members when the REST API needs
# one) and names its IP; otherwise it is reissued. Prints "reissued NAME" for each one issued.
set -euo pipefail
dir=$1 owner=$2; shift 2
tls=$(cd "$(dirname "${BASH_SOURCE[0]}")/tls" && pwd)
for f in ca.crt ca.key probe-client.crt probe-client.key; do
  [[ -s $tls/$f ]] || { echo "gen-certs.sh: $tls/$f is missing (lab/tls/make.sh makes it)" >&2; exit 1; }
done
umask 077
mkdir -p "$dir"
cd "$dir"

if ! cmp -s "$tls/ca.crt" ca.crt || ! cmp -s "$tls/ca.key" ca.key; then
  [[ -e ca.crt ]] && echo "gen-certs.sh: $dir: lab CA replaced by lab/tls/ca.crt; node certificates it did not sign are reissued" >&2
  install -m 0600 "$tls/ca.key" ca.key
  install -m 0644 "$tls/ca.crt" ca.crt
fi
# Public test keys: readable by whoever runs pgfront or the tests.
for f in probe-client.crt probe-client.key; do
  cmp -s "$tls/$f" "$f" || install -m 0644 "$tls/$f" "$f"
done

# node_cert_ok NAME IP: the certificate verifies against ca.crt, serves and authenticates
# clients, and names IP.
node_cert_ok() {
  local text
  [[ -s $1.crt && -s $1.key ]] || return 1
  openssl verify -CAfile ca.crt -purpose sslserver "$1.crt" >/dev/null 2>&1 || return 1
  openssl verify -CAfile ca.crt -purpose sslclient "$1.crt" >/dev/null 2>&1 || return 1
  text=$(openssl x509 -in "$1.crt" -noout -ext subjectAltName 2>/dev/null) || return 1
  [[ $text == *"IP Address:$2,"* || $text == *"IP Address:$2" ]]
}

for spec in "$@"; do
  name=${spec%%=*} ip=${spec#*=}
  node_cert_ok "$name" "$ip" && continue
  openssl req -new -nodes -newkey rsa:2048 -sha256 -keyout "$name.key" -out "$name.csr" \
    -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -out "$name.crt" -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectKeyIdentifier=hash" \
      "authorityKeyIdentifier=keyid" \
      "subjectAltName=IP:127.0.0.1,IP:$ip,DNS:localhost,DNS:$name") 2>/dev/null
  rm -f "$name.csr"
  node_cert_ok "$name" "$ip" || { echo "gen-certs.sh: $name.crt does not verify after issuing" >&2; exit 1; }
  echo "reissued $name"
done

# PostgreSQL insists on a server key owned by its user with mode 0600; the CA key stays root's.
for spec in "$@"; do
  name=${spec%%=*}
  chown "$owner:" "$name.key" "$name.crt"
  chmod 0600 "$name.key"
  chmod 0644 "$name.crt"
done
chmod 0755 .
