#!/usr/bin/env bash
# Runs the proxy benchmark (direct / mosaic-gateway / nginx / HAProxy) in one go.
# Same as `cargo bench --bench proxy_bench`, with the proxies installed first and the
# open-file limit raised for every process it starts. Settings: see benches/proxy_bench/main.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/install-proxies.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo bench --bench proxy_bench "$@"
