#!/usr/bin/env bash
# Makes ./.venv: the pinned dependencies (requirements/lock.txt, torch included, ~6 GB) live in a venv cached
# outside the repo, keyed by the lock's hash, built once per machine; ./.venv is a light layer on top of it
# (a .pth file) with this checkout installed editable, so every checkout and CI clone reuses the heavy part.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
py=${PYTHON:-python3.11}
lock=$root/requirements/lock.txt
key=$( { cat "$lock"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
deps=$cache/deps-$key

if [ ! -f "$deps/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$deps.lock"
  flock 9 # another checkout may be building the same venv
  if [ ! -f "$deps/.complete" ]; then
    echo "venv: installing pinned dependencies into $deps (once per machine, ~2-4 min)" >&2
    rm -rf "$deps"
    "$py" -m venv "$deps"
    "$deps/bin/pip" install -q "pip==26.3"
    "$deps/bin/pip" install -q --no-deps -r "$lock"
    "$deps/bin/pip" check >&2
    touch "$deps/.complete"
  fi
  exec 9>&-
fi

venv=$root/.venv
stamp=$( { echo "$key"; cat "$root/pyproject.toml"; } | sha256sum | cut -c1-12)
if [ ! -f "$venv/.stamp-$stamp" ]; then
  echo "venv: layering $venv on $deps" >&2
  rm -rf "$venv"
  "$py" -m venv --without-pip "$venv"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dsite=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path) so .pth files inside the cached site-packages are honoured too.
  echo "import site; site.addsitedir('$dsite')" >"$site/_bertmesh_deps.pth"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" >"$venv/install.log" 2>&1 \
    || { cat "$venv/install.log" >&2; exit 1; }
  touch "$venv/.stamp-$stamp"
fi
