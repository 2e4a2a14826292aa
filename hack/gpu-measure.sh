#!/usr/bin/env bash
# The GPU measurement in one device call: the CUDA engine's GPU tests, then `python -m bench gpu`
# (engine in process, first pass, bertmesh serve over gRPC, peers), results written under $OUT.
#
#   hack/gpu-measure.sh prepare           here, once (the venv built): the Python 3.12 wheels the GPU machine
#                                         lacks into .whl/, the bundled MiniLM's tokenizer/config files into
#                                         .gpu-files/minilm/ (both git-ignored; ~9 MB of the 64 MiB that travel)
#   hack/gpu-measure.sh run [ARGS]        on the GPU machine; ARGS go to `python -m bench gpu`
#   hack/gpu-measure.sh dry-run           here: the `run` steps on CPU with a tiny model, through the table
#   hack/gpu-measure.sh files DIR         copy the model files into DIR (part of prepare)
#
# A session with a GPU: `hack/gpu-measure.sh prepare`, then the device tool's
#   run(command="hack/gpu-measure.sh run", carry=[".whl", ".gpu-files"], timeout_s=600)
# and read $OUT: versions.txt, tests.log, bench.log, gpu/summary.md, gpu/results.json, gpu/serve-*.log.
# The GPU tests get TEST_SECONDS (default 150) and the bench BENCH_SECONDS (default 370); to split the bench
# over two calls: `run --parts engine,first-pass` then `run --parts serve,peers` (with TEST_SECONDS=0 skipping
# the tests the second time).
# The GPU machine has Python 3.12, torch 2.11, transformers 5.17, sentence-transformers, pytest and grpcio,
# but not this project's protobuf runtime and gRPC extras (../shared/GPU.md); the project runs from its source
# tree on PYTHONPATH, with the wheels installed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
FILES=.gpu-files/minilm
PINS=(grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2 uvloop==0.23.0)
# Windows sized so everything fits one 10-minute device command with room to spare (about 6 minutes).
BENCH_DEFAULTS=(--seconds 10 --serve-seconds 10)

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

files() {
    local py=${PY:-.venv/bin/python}
    mkdir -p "$1"
    "$py" - "$1" <<'PY'
import shutil, sys
from pathlib import Path
from bench.gpu_models import MODEL_FILES, bundled_files

for name in MODEL_FILES:
    shutil.copy(bundled_files() / name, Path(sys.argv[1]) / name)
PY
}

prepare() {
    local py=${PY:-.venv/bin/python}
    mkdir -p "$WHEELS"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${PINS[@]}"
    files "$FILES"
    du -sh "$WHEELS" "$FILES"
}

run() {
    local out=${OUT:-bench/results/gpu-measure}
    mkdir -p "$out"
    [[ -d $WHEELS && -d $FILES ]] || { echo "missing $WHEELS or $FILES: run 'hack/gpu-measure.sh prepare' here and carry both" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bertmesh-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/bertmesh-site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    python3 -c 'import sys, torch, transformers, grpc, google.protobuf as pb; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "grpc", grpc.__version__, "protobuf", pb.__version__, torch.cuda.get_device_name())' | tee "$out/versions.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/versions.txt" || true
    # A failing GPU test is reported, not fatal: the benchmark still runs in the same (scarce) device call.
    # Each step has its own time limit inside the device call's 600 s; the bench rewrites results.json and
    # summary.md after every measurement, so a step cut short keeps what it measured.
    if [[ ${TEST_SECONDS:-150} != 0 ]]; then
        timeout -k 5 "${TEST_SECONDS:-150}" python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -p no:randomly \
            2>&1 | tee "$out/tests.log" || true
    fi
    timeout -k 10 "${BENCH_SECONDS:-370}" python3 -m bench gpu --model-files "$FILES" "${BENCH_DEFAULTS[@]}" \
        --out "$out/gpu" "$@" 2>&1 | tee "$out/bench.log"
}

dry_run() {
    local out=${OUT:-bench/results/gpu-measure-dry}
    local py=${PY:-.venv/bin/python}
    [[ -d $FILES ]] || files "$FILES"
    mkdir -p "$out"
    HF_HUB_OFFLINE=1 "$py" -m bench gpu --dry-run --model-files "$FILES" --out "$out/gpu" "$@"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    dry-run) shift; dry_run "$@" ;;
    files) [[ $# -eq 2 ]] || usage; files "$2" ;;
    *) usage ;;
esac
