#!/bin/sh
# Fill in the nginx configuration from the environment, make a self-signed certificate when none
# is mounted (replace it with a real one: /etc/domus/tls/cert.pem and key.pem), run nginx.
set -eu
: "${DOMUS_PUBLIC_HOST:=localhost}" "${DOMUS_PROXY_PORT:=443}" "${DOMUS_WEB_UPSTREAMS:=127.0.0.1:8001 127.0.0.1:8002}"
TLS=/etc/domus/tls
mkdir -p "$TLS"
if [ ! -s "$TLS/cert.pem" ] || [ ! -s "$TLS/key.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$DOMUS_PUBLIC_HOST" \
        -addext "subjectAltName=DNS:$DOMUS_PUBLIC_HOST,DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS/key.pem" -out "$TLS/cert.pem" 2>/dev/null
    chmod 600 "$TLS/key.pem"
    echo "domus-proxy: no certificate in $TLS; made a self-signed one for $DOMUS_PUBLIC_HOST"
fi
DOMUS_UPSTREAM_SERVERS=$(for server in $DOMUS_WEB_UPSTREAMS; do printf '    server %s max_fails=1 fail_timeout=5s;\n' "$server"; done)
export DOMUS_PUBLIC_HOST DOMUS_PROXY_PORT DOMUS_UPSTREAM_SERVERS
envsubst '$DOMUS_PUBLIC_HOST $DOMUS_PROXY_PORT $DOMUS_UPSTREAM_SERVERS' \
    < /etc/nginx/domus.conf.template > /etc/nginx/conf.d/domus.conf
nginx -t -q
exec nginx -g 'daemon off;'
