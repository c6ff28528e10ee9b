#!/usr/bin/env bash
# Installs what the proxy benchmark compares against (Debian packages), if missing:
# nginx (nginx-light: http proxy + ssl), HAProxy and openssl. Needs root (apt-get).
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
echo "bench: installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages may start system services; the benchmark runs its own instances.
for svc in nginx haproxy; do
    if [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
done
