#!/usr/bin/env bash
# Infinity (infinity-emb, torch engine), in its own venv. Prints the venv directory; idempotent.
set -euo pipefail
. "$(dirname "$0")/common.sh"
version=${INFINITY_VERSION:-0.0.78}
dir=$(make_peer_venv infinity "$version" "infinity-emb[server,torch]==$version")
"$dir/bin/python" -c 'import infinity_emb, torch, transformers; print("infinity ok; torch", torch.__version__, "transformers", transformers.__version__)' >&2
echo "$dir"
