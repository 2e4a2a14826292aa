# shellcheck shell=bash
# Sourced by the scripts that build something once per machine into a cache directory
# (~/.cache/bertmesh/<what>-<key>/, complete once it holds .complete): hack/k8s-toolchain.sh, hack/istiod.sh.

# cache_dir_cli DIR PRINTED [ARG]: `--print-dir` prints PRINTED and `--check` says whether DIR is complete (both
# exit); no argument returns; anything else is a usage error.
cache_dir_cli() {
  case "${3:-}" in
    --print-dir) echo "$2"; exit 0 ;;
    --check) [ -f "$1/.complete" ]; exit $? ;;
    "") ;;
    *) echo "usage: $0 [--print-dir|--check]" >&2; exit 2 ;;
  esac
}

# cache_dir_lock DIR: exits 0 when DIR is complete, now or after waiting for a concurrent build of it; else
# returns holding DIR.lock (file descriptor 9) until the script ends. Logs with the caller's log().
cache_dir_lock() {
  if [ -f "$1/.complete" ]; then
    log "reusing $1"
    exit 0
  fi
  mkdir -p "$(dirname "$1")"
  exec 9>"$1.lock"
  if ! flock -n 9; then
    log "another build of $1 is running; waiting for it"
    flock 9
  fi
  if [ -f "$1/.complete" ]; then
    log "reusing $1 (built by the run we waited for)"
    exit 0
  fi
}
