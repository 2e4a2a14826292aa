#!/usr/bin/env bash
# py-spy (sampling profiler, a Rust binary on PyPI) for `python -m bench profile`. Prints its path; idempotent.
set -euo pipefail
. "$(dirname "$0")/common.sh"
version=${PYSPY_VERSION:-0.4.3}
dir=$cache/bench-py-spy-$version
if [ ! -x "$dir/bin/py-spy" ]; then
  say "py-spy $version: installing into $dir"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/pip" install -q "py-spy==$version" >&2
fi
echo "$dir/bin/py-spy"
