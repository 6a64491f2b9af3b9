#!/bin/sh
# A private CA and a certificate it signed for the broker (127.0.0.1 and localhost), into
# certs/: enough to try TLS locally. A real broker has a certificate from your own CA; grant
# that CA's file instead (grants.tls = { ca = "…" } in pipeline.toml).
set -e
cd "$(dirname "$0")"
mkdir -p certs
cd certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -keyout ca.key -out ca.pem -subj "/CN=patchbay example CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout broker.key -out broker.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > broker.ext
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
    -extfile broker.ext -out broker.pem 2>/dev/null
rm -f broker.csr broker.ext ca.srl
echo "certs/ca.pem, certs/broker.pem, certs/broker.key"
