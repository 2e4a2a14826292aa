#!/usr/bin/env bash
# The GPU measurement in one device call: the CUDA engine's GPU tests, then `python -m bench gpu`
# (engine in process, first pass, bertmesh serve over gRPC, peers), results written under $OUT.
#
#   hack/gpu-measure.sh prepare           here, once (the venv built): the Python 3.12 wheels the GPU machine
#                                         lacks into .whl/, the bundled MiniLM's tokenizer/config files into
#                                         .gpu-files/minilm/ (both git-ignored; ~17 MB of the 64 MiB that travel)
#   hack/gpu-measure.sh run [ARGS]        on the GPU machine; ARGS go to `python -m bench gpu`
#   hack/gpu-measure.sh dry-run           here: the `run` steps on CPU with a tiny model, through the table
#   hack/gpu-measure.sh emulate           here, after prepare: the dry run and the CPU engine tests inside a copy
#                                         of the GPU machine's image (Python 3.12, its torch and transformers
#                                         versions, only its packages, the wheels installed as `run` installs
#                                         them): what would fail there for a missing package or an API of
#                                         those versions fails here, before a scarce device call
#   hack/gpu-measure.sh files DIR         copy the model files into DIR (part of prepare)
#   hack/gpu-measure.sh pins | image      the packages prepare brings (name==version) | the image emulate builds
#
# A session with a GPU: `hack/gpu-measure.sh prepare`, then the device tool's
#   run(command="hack/gpu-measure.sh run", carry=[".whl", ".gpu-files"], timeout_s=600)
# and read $OUT: versions.txt, tests.log, bench.log, gpu/summary.md, gpu/results.json, gpu/serve-*.log.
# The GPU tests get TEST_SECONDS (default 150) and the bench BENCH_SECONDS (default 370); to split the bench
# over two calls: `run --parts engine,first-pass` then `run --parts serve,peers` (with TEST_SECONDS=0 skipping
# the tests the second time).
# The GPU machine has Python 3.12, torch 2.11, transformers 5.17, sentence-transformers, pytest and grpcio,
# but not this project's protobuf runtime, gRPC extras and HTTP front (../shared/GPU.md); the project runs from
# its source tree on PYTHONPATH, with the wheels installed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
FILES=.gpu-files/minilm
# What `bertmesh serve` imports that the GPU machine's image lacks (../shared/GPU.md), at the lock's versions:
# gRPC and its protobuf runtime, and the HTTP front (fastapi, uvicorn, orjson) with their dependencies.
LACKING=(grpcio grpcio-health-checking grpcio-reflection protobuf uvloop
    fastapi starlette pydantic pydantic_core annotated-types annotated-doc typing-inspection typing_extensions
    opentelemetry-api anyio idna sniffio uvicorn h11 click httptools orjson)
# The GPU machine's image as ../shared/GPU.md lists it; `emulate` builds a venv of exactly these.
IMAGE=(torch==2.11.0 transformers==5.17.0 tokenizers==0.23.2 sentence-transformers==6.0.1 numpy psutil safetensors
    prometheus-client grpcio pytest)
# Windows sized to fit one 10-minute device command: about 7 minutes estimated, not yet timed on a GPU.
BENCH_DEFAULTS=(--seconds 10 --serve-seconds 10)

usage() {
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >&2  # the comment block at the top, however long
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

pins() {
    local name
    for name in "${LACKING[@]}"; do
        # pip's names: case and -/_ are the same name
        grep -iE "^${name//[-_]/[-_]}==" requirements/lock.txt || { echo "$name is not in requirements/lock.txt" >&2; exit 1; }
    done
}

prepare() {
    local py=${PY:-.venv/bin/python}
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $(pins)
    files "$FILES"
    du -sh "$WHEELS" "$FILES"
}

# The wheels beside the image's own packages, first on the path, and the source tree: as on the GPU machine.
site() {
    local python=$1 target=$2
    [[ -d $WHEELS && -d $FILES ]] || { echo "missing $WHEELS or $FILES: run 'hack/gpu-measure.sh prepare' here and carry both" >&2; exit 1; }
    if "$python" -m pip --version >/dev/null 2>&1; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$WHEELS"/*.whl
    else  # an image without pip: a wheel is a zip of what goes on the path
        "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$target" "$WHEELS"/*.whl
    fi
    export PYTHONPATH="$target:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

run() {
    local out=${OUT:-bench/results/gpu-measure}
    mkdir -p "$out"
    site python3 /tmp/bertmesh-site
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

# A Python 3.12 (the image's): IMAGE_PYTHON, or python3.12 on PATH, or one pyenv has.
image_python() {
    local found
    for found in "${IMAGE_PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        [[ -n $found ]] && "$found" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
            && { command -v "$found"; return; }
    done
    echo "emulate needs a Python 3.12 (set IMAGE_PYTHON)" >&2
    exit 1
}

emulate() {
    local cache=${BERTMESH_CACHE:-$HOME/.cache/bertmesh}
    local python key venv out=${OUT:-bench/results/gpu-measure-emulate}
    python=$(image_python)
    key=$(printf '%s\n' "$("$python" --version)" "${IMAGE[@]}" | sha256sum | cut -c1-12)
    venv=$cache/gpu-image-$key
    if [[ ! -f $venv/.complete ]]; then
        echo "emulate: building the GPU machine's image into $venv (once per machine, a few minutes)" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q "${IMAGE[@]}"
        touch "$venv/.complete"
    fi
    EMULATED_SITE=$(mktemp -d)
    trap 'rm -rf "$EMULATED_SITE"' EXIT
    site "$venv/bin/python" "$EMULATED_SITE"
    mkdir -p "$out"
    # Every import the GPU run makes, then the engine tests that run on CPU, then the bench through its table.
    "$venv/bin/python" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -p no:randomly --collect-only >"$out/collect.log" \
        || { cat "$out/collect.log"; exit 1; }
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not gpu" tests/server/test_cuda_engine.py \
        tests/server/test_engines.py
    "$venv/bin/python" -m bench gpu --dry-run --model-files "$FILES" --out "$out/gpu"
}

case "${1:-}" in
    prepare) prepare ;;
    emulate) emulate ;;
    pins) pins ;;
    image) printf '%s\n' "${IMAGE[@]}" ;;
    run) shift; run "$@" ;;
    dry-run) shift; dry_run "$@" ;;
    files) [[ $# -eq 2 ]] || usage; files "$2" ;;
    *) usage ;;
esac
