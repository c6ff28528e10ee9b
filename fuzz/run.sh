#!/usr/bin/env bash
# Runs one fuzz target (built by ./build.sh) for SECONDS, growing fuzz/corpus-run/<target>
# from the committed seeds in fuzz/corpus/<target>; crashes land in fuzz/artifacts/<target>/.
#   ./run.sh proxy_protocol 180        (targets: see fuzz_targets/)
#   ./run.sh proxy_protocol merge      (folds new coverage from corpus-run into corpus/)
set -euo pipefail
cd "$(dirname "$0")"
t="$1"; secs="${2:-180}"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release/$t"
case "$t" in
  proxy_protocol) max_len=1200 ;;
  frame_tracker|tracker_2025|config_parse) max_len=4096 ;;
  mosaic_head) max_len=64 ;;
  *) max_len=2048 ;;
esac
mkdir -p "corpus-run/$t" "artifacts/$t" "corpus/$t"
if [ "$secs" = merge ]; then
  exec "$bin" -merge=1 -max_len=$max_len "corpus/$t" "corpus-run/$t"
fi
exec "$bin" -max_total_time="$secs" -max_len=$max_len -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus-run/$t" "corpus/$t"
