#!/usr/bin/env bash
# perf_analyzer: the binary ships inside the tritonclient 2.51.0 wheel; it needs Debian's libb64-0d and
# libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12), even on a CPU-only machine. Prints the path of a wrapper
# script that sets LD_LIBRARY_PATH and runs it; idempotent.
set -euo pipefail
. "$(dirname "$0")/common.sh"
version=${TRITONCLIENT_VERSION:-2.51.0}
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
  say "apt-get install libb64-0d"
  (apt-get install -y -q libb64-0d >&2) || { apt-get update -q >&2 && apt-get install -y -q libb64-0d >&2; }
fi
dir=$(make_peer_venv perf_analyzer "$version" "tritonclient[all]==$version" "nvidia-cuda-runtime-cu12")
wrapper=$dir/bin/perf_analyzer_wrapped
if [ ! -x "$wrapper" ]; then
  bin=$(find "$dir" -type f -name perf_analyzer -perm -u+x | head -1)
  [ -n "$bin" ] || { say "no perf_analyzer binary in tritonclient==$version"; exit 1; }
  cudart=$(dirname "$(find "$dir" -name 'libcudart.so.12*' | head -1)")
  printf '#!/usr/bin/env bash\nexport LD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexec %s "$@"\n' \
    "$cudart" "$bin" >"$wrapper"
  chmod +x "$wrapper"
fi
"$wrapper" --version >/dev/null 2>&1 || { say "perf_analyzer does not start:"; "$wrapper" --version >&2 || true; exit 1; }
say "perf_analyzer ok: $wrapper"
echo "$wrapper"
