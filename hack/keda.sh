#!/usr/bin/env bash
# Builds KEDA (its operator and its metrics API server, the "adapter") for the autoscaling e2e tier
# (docs/testing.md), at the version pinned below, into its own cache outside the repo:
#   ${BERTMESH_CACHE:-~/.cache/bertmesh}/keda-<version>-<hash of the pin and BUILD_REVISION>/
#     bin/keda-operator bin/keda-adapter   share/crd/*.yaml (KEDA's CRDs, from the module's config/crd/bases)
#     version.txt   .complete (written last: a directory without it is never used)
# Its own key, not the k8s toolchain's: adding KEDA must not invalidate the ~15-minute Kubernetes build.
# Cold: ~6 min on 2 idle cores (316 s + 41 s of compiling); 23 min measured while the Kubernetes toolchain
# built beside it. Concurrent runs of this script wait on a lock.
#
# Usage: hack/keda.sh              build or reuse; progress on stderr
#        hack/keda.sh --print-dir  print the bin directory (built or not) and exit
#        hack/keda.sh --check      exit 0 when built, 1 when not
{
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Pinned here, not in hack/k8s/versions.env: that file keys the Kubernetes toolchain's cache.
KEDA_VERSION=v2.21.0
# Bump when this script changes how KEDA is built (flags, layout), so caches are rebuilt.
BUILD_REVISION=1
cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
hash=$(echo "$KEDA_VERSION $BUILD_REVISION" | sha256sum | cut -c1-10)
dir=$cache/keda-${KEDA_VERSION#v}-$hash
bin=$dir/bin

# shellcheck source=hack/lib/cache-dir.sh
. "$root/hack/lib/cache-dir.sh"
cache_dir_cli "$dir" "$bin" "$@"
log() { printf '[keda %s] %s\n' "$(date +%T)" "$*" >&2; }
cache_dir_lock "$dir"

started=$SECONDS
mod=github.com/kedacore/keda/v2
src=$dir/src     # the wrapper module, kept for reference: its go.mod says how the binaries were built
stage=$dir/stage # a binary lands here first and moves into bin/ whole, so bin/ never holds a partial file
rm -rf "$src"
mkdir -p "$bin" "$src" "$stage" "$dir/share/crd"
json=$(cd "$src" && go mod download -json "$mod@$KEDA_VERSION")
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$json"; }
upstream=$(field GoMod)
# `go install pkg@version` refuses a module with replace directives, so the binaries are built in a wrapper
# module that carries KEDA's own replace and exclude lines (and its go/godebug lines: the tested defaults).
{
  echo "module bertmesh.local/keda-build"
  echo
  awk '/^go [0-9]/ || /^godebug / || /^replace [^(]/ || /^exclude [^(]/ { print }' "$upstream"
  echo
  echo "require $mod $KEDA_VERSION"
} >"$src/go.mod"
if ! grep -q '^replace ' "$src/go.mod"; then
  log "expected KEDA's go.mod to carry a replace line; the wrapper recipe needs a look"
  exit 1
fi
log "building keda-operator and keda-adapter@$KEDA_VERSION into $dir (cold: ~6 min on 2 cores)"
(cd "$src" && go get "$mod/cmd/operator@$KEDA_VERSION" "$mod/cmd/adapter@$KEDA_VERSION")
ld="-s -w -X $mod/version.Version=$KEDA_VERSION"
for c in operator adapter; do
  t=$SECONDS
  (cd "$src" && CGO_ENABLED=0 nice -n 10 go build -trimpath -buildvcs=false -ldflags "$ld" \
    -o "$stage/keda-$c" "$mod/cmd/$c")
  mv "$stage/keda-$c" "$bin/keda-$c"
  log "built keda-$c in $((SECONDS - t)) s"
done
rmdir "$stage"
cp "$(field Dir)"/config/crd/bases/*.yaml "$dir/share/crd/"
chmod -R u+w "$dir/share" # the module cache is read-only
echo "keda $KEDA_VERSION" >"$dir/version.txt"
touch "$dir/.complete"
log "done in $((SECONDS - started)) s"
exit 0
}
