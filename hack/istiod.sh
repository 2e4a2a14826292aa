#!/usr/bin/env bash
# Builds istiod (Istio's pilot-discovery) for the mesh e2e tier (docs/testing.md), at the Istio pseudo-version
# pinned in hack/k8s/versions.env (the one istioctl is built from), into its own cache outside the repo:
#   ${BERTMESH_CACHE:-~/.cache/bertmesh}/istiod-<pseudo-version>-<hash of the pin and BUILD_REVISION>/
#     bin/pilot-discovery   version.txt   .complete (written last: a directory without it is never used)
# Its own key, not the k8s toolchain's: adding istiod must not invalidate the ~15-minute Kubernetes build.
# Cold: ~4.5 min on 2 cores with Istio's modules already in Go's module cache; concurrent runs wait on a lock.
#
# Usage: hack/istiod.sh              build or reuse; progress on stderr
#        hack/istiod.sh --print-dir  print the bin directory (built or not) and exit
#        hack/istiod.sh --check      exit 0 when built, 1 when not
{
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ISTIO_VERSION=$(sed -n 's/^ISTIO_VERSION=//p' "$root/hack/k8s/versions.env")
[ -n "$ISTIO_VERSION" ] || { echo "no ISTIO_VERSION in hack/k8s/versions.env" >&2; exit 1; }
# Bump when this script changes how pilot-discovery is built (flags, layout), so caches are rebuilt.
BUILD_REVISION=1
cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
hash=$(echo "$ISTIO_VERSION $BUILD_REVISION" | sha256sum | cut -c1-10)
dir=$cache/istiod-$ISTIO_VERSION-$hash
bin=$dir/bin

# shellcheck source=hack/lib/cache-dir.sh
. "$root/hack/lib/cache-dir.sh"
cache_dir_cli "$dir" "$bin" "$@"
log() { printf '[istiod %s] %s\n' "$(date +%T)" "$*" >&2; }
cache_dir_lock "$dir"

started=$SECONDS
stage=$dir/stage # the binary lands here first and moves into bin/ whole, so bin/ never holds a partial file
mkdir -p "$bin" "$stage"
iv=istio.io/istio/pkg/version
log "building pilot-discovery@$ISTIO_VERSION into $dir (cold: ~4.5 min on 2 cores)"
CGO_ENABLED=0 GOBIN=$stage nice -n 10 go install -trimpath -buildvcs=false -ldflags \
  "-s -w -X $iv.buildVersion=$ISTIO_VERSION -X $iv.buildGitRevision=${ISTIO_VERSION##*-} -X $iv.buildStatus=Clean" \
  "istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_VERSION"
mv "$stage/pilot-discovery" "$bin/pilot-discovery"
rmdir "$stage"
"$bin/pilot-discovery" version --short 2>/dev/null >"$dir/version.txt"
touch "$dir/.complete"
log "done in $((SECONDS - started)) s: $(cat "$dir/version.txt")"
exit 0
}
