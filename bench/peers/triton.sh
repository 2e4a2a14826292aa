#!/usr/bin/env bash
# NVIDIA Triton through nvidia-pytriton (bundles tritonserver and its Python backend; runs on CPU here).
# Prints the venv directory on stdout; progress on stderr. Idempotent.
set -euo pipefail
. "$(dirname "$0")/common.sh"
version=${PYTRITON_VERSION:-0.7.0}
dir=$(make_peer_venv triton "$version" "nvidia-pytriton==$version")
# The Python-backend stub links against the interpreter's own libpython: it must be on LD_LIBRARY_PATH.
libdir=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
[ -e "$libdir/libpython3.11.so.1.0" ] || say "warning: no libpython3.11.so.1.0 in $libdir (the stub needs it)"
"$dir/bin/python" -c 'import pytriton, torch, transformers; print("pytriton ok; torch", torch.__version__, "transformers", transformers.__version__)' >&2
echo "$dir"
