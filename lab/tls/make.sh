#!/usr/bin/env bash
# Regenerates the TEST CA and pgfront's certificates for the loopback lab (see README.md here:
# the CA key is committed, so it is public; never trust this CA anywhere else).
#
# usage: lab/tls/make.sh          new CA, then new pgfront and probe-client certificates
#        lab/tls/make.sh --leaf   keep the CA, reissue pgfront and probe-client only
#
#   ca.crt, ca.key                  lab CA (RSA 2048, 10 years). lab/gen-certs.sh copies it
#                                   into each lab's certs dir and issues the node certs with it.
#   pgfront.crt, pgfront.key        pgfront's listener certificate: serverAuth, SAN IP:127.0.0.1,
#                                   DNS:localhost, IP:127.0.0.2, IP:127.0.0.3.
#   probe-client.crt, probe-client.key, probe-client.pem (both in one file, as HAProxy's crt)
#                                   client certificate (clientAuth, CN=pgfront-probe) for
#                                   pgfront's health probe against Patroni REST APIs that require
#                                   client certificates (scripts/cluster, PGFRONT_LAB_REST_TLS=1).
#
# A new CA invalidates the node certificates of existing labs: the next `scripts/cluster up`
# copies it in and reissues them. Commit all six files. Keys are mode 0644 on purpose (public
# test keys, git does not keep modes anyway); PostgreSQL's own keys are gen-certs' 0600 copies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 022
DAYS=3650

case ${1:-} in
  "")
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days $((DAYS + 3)) \
      -keyout ca.key -out ca.crt \
      -subj "/O=pgfront lab/CN=pgfront lab TEST CA (public key, loopback lab only)" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
    ;;
  --leaf) [[ -s ca.crt && -s ca.key ]] || { echo "make.sh: no CA here; run without --leaf" >&2; exit 1; } ;;
  *) sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

# issue NAME SUBJECT EKU SAN...: an RSA 2048 key and a certificate signed by ca.key.
issue() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  local ext=(
    "basicConstraints=critical,CA:FALSE"
    "keyUsage=critical,digitalSignature,keyEncipherment"
    "extendedKeyUsage=$eku"
    "subjectKeyIdentifier=hash"
    "authorityKeyIdentifier=keyid"
  )
  [[ -n $san ]] && ext+=("subjectAltName=$san")
  openssl req -new -nodes -newkey rsa:2048 -sha256 -keyout "$name.key" -out "$name.csr" \
    -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key \
    -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 -out "$name.crt" \
    -extfile <(printf '%s\n' "${ext[@]}") 2>/dev/null
  rm -f "$name.csr"
  local purpose=sslserver
  [[ $eku == clientAuth ]] && purpose=sslclient
  openssl verify -CAfile ca.crt -purpose "$purpose" "$name.crt" >/dev/null
}

issue pgfront "/O=pgfront lab/CN=pgfront" serverAuth \
  "IP:127.0.0.1,DNS:localhost,IP:127.0.0.2,IP:127.0.0.3"
issue probe-client "/O=pgfront lab/CN=pgfront-probe" clientAuth
# HAProxy's `crt` holds the certificate and its key in one file (the importer's tests use it).
cat probe-client.crt probe-client.key >probe-client.pem

chmod 0644 ca.crt ca.key pgfront.crt pgfront.key probe-client.crt probe-client.key probe-client.pem
for f in ca pgfront probe-client; do
  printf '%-18s %s, until %s\n' "$f.crt" "$(openssl x509 -in "$f.crt" -noout -subject)" \
    "$(openssl x509 -in "$f.crt" -noout -enddate | cut -d= -f2)"
done
