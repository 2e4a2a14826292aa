#!/usr/bin/env bash
# Shared by the peer setup scripts: where peers are cached and how their venvs are made.
#
# Every peer gets its own venv under ${BERTMESH_CACHE:-~/.cache/bertmesh}/bench-<name>-<version>/, built once
# (a .complete stamp) under a lock, so reruns are instant and two checkouts never build the same peer at once.
# torch itself is NOT reinstalled per peer: a .pth file appends the project's pinned dependency venv (made by
# hack/venv.sh) to the END of the peer's sys.path. The peer's own packages (its transformers, numpy, ...) are
# installed into its venv and shadow the project's; only what the peer does not pin (torch 2.15 and its
# nvidia-* wheels, ~3 GB) comes from the project. Every system then runs the identical torch build and kernels,
# which is what a same-model comparison needs, and a peer costs seconds of disk, not a 3 GB download.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
py=${PYTHON:-python3.11}

say() { echo "peer setup: $*" >&2; }

# project_site: the site-packages of the project's pinned venv (hack/venv.sh builds it if needed).
project_site() {
  "$root/hack/venv.sh" >&2
  "$root/.venv/bin/python" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))'
}

# make_peer_venv NAME VERSION PIP_ARGS...: builds (once) the venv and prints its directory.
make_peer_venv() {
  local name=$1 version=$2; shift 2
  local dir=$cache/bench-$name-$version
  local site
  site=$(project_site)
  mkdir -p "$cache"
  exec 8>"$dir.lock"
  flock 8
  if [ ! -f "$dir/.complete" ] || [ "$(cat "$dir/.torch-from" 2>/dev/null)" != "$site" ]; then
    say "$name $version: creating $dir"
    rm -rf "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/pip" install -q "pip==26.3"
    local psite
    psite=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # zz_: processed after the peer's own .pth files; addsitedir appends, so the peer's packages win.
    echo "import site; site.addsitedir('$site')" >"$psite/zz_bertmesh_torch.pth"
    say "$name $version: pip install $*"
    "$dir/bin/pip" install -q "$@" >&2
    echo "$site" >"$dir/.torch-from"
    touch "$dir/.complete"
  else
    say "$name $version: cached in $dir"
  fi
  exec 8>&-
  echo "$dir"
}
