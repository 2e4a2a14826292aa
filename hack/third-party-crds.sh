#!/usr/bin/env bash
# Fetches the third-party CRDs that bertmesh's manifests are validated against in the e2e tier, from the Go module
# proxy (their projects' modules carry them), into a cache outside the repo:
#   ${BERTMESH_CACHE:-~/.cache/bertmesh}/crds-<hash of this file>/
#     kserve/serving.kserve.io_servingruntimes.yaml               KServe's ServingRuntime (deploy/kserve/)
#     prometheus-operator/monitoring.coreos.com_podmonitors.yaml  the chart's PodMonitor
#     versions.txt, .complete (written last: a directory without it is never used)
# Seconds when Go's module cache is warm. Usage: hack/third-party-crds.sh [--print-dir|--check]
set -euo pipefail
# The proxy refuses the version lists of these modules but serves these versions (the newest it serves).
KSERVE_VERSION=v0.20.0
PROMETHEUS_OPERATOR_VERSION=v0.89.0

cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
dir=$cache/crds-$(sha256sum "$0" | cut -c1-10)
case "${1:-}" in
  --print-dir) echo "$dir"; exit 0 ;;
  --check) [ -f "$dir/.complete" ]; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--print-dir|--check]" >&2; exit 2 ;;
esac
log() { printf '[third-party-crds %s] %s\n' "$(date +%T)" "$*" >&2; }
if [ -f "$dir/.complete" ]; then
  log "reusing $dir"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$dir.lock"
flock 9
[ -f "$dir/.complete" ] && exit 0

# Prints the directory of module@version in Go's module cache (downloading it), run outside any module.
outside=$(mktemp -d)
trap 'rm -rf "$outside"' EXIT
module_dir() {
  local json
  json=$(cd "$outside" && go mod download -json "$1") || {
    log "the Go module proxy refused $1"
    return 1
  }
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

rm -rf "$dir.tmp"
mkdir -p "$dir.tmp/kserve" "$dir.tmp/prometheus-operator"
kserve=$(module_dir "github.com/kserve/kserve@$KSERVE_VERSION")
cp "$kserve/config/crd/full/serving.kserve.io_servingruntimes.yaml" "$dir.tmp/kserve/"
promop=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
cp "$promop/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" "$dir.tmp/prometheus-operator/"
chmod -R u+w "$dir.tmp" # module cache files are read-only
printf 'kserve %s\nprometheus-operator %s\n' "$KSERVE_VERSION" "$PROMETHEUS_OPERATOR_VERSION" >"$dir.tmp/versions.txt"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
touch "$dir/.complete"
log "wrote $dir"
