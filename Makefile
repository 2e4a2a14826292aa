# Two commands on a fresh machine: `make serve` (bertmesh serve on the bundled model, CPU) and `make test`.
# Each installs what it needs: the pinned venv (hack/venv.sh) and, for the e2e tier, the Kubernetes toolchain
# (hack/k8s-toolchain.sh, hack/istiod.sh, hack/keda.sh); each is cached under ~/.cache/bertmesh and reused.
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv serve test test-fast test-e2e test-gpu lint protos generate toolchain bench clean

venv:
	@hack/venv.sh

serve: venv
	.venv/bin/bertmesh serve $(ARGS)

## lint + every test tier (the command CI runs); the int8 accuracy tests once more with oneDNN capped at AVX2,
## whose int8 product saturates (no VNNI), and the attention kernel's tests on its AVX2 code, so a green run is
## green on AVX2-only CPUs too. CI has no GPU: the tests that need one (tests/gpu, marker gpu) are deselected
## here, and pytest's summary counts them as deselected; `make test-gpu` runs them on a GPU machine.
test: venv toolchain lint
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)
	ONEDNN_MAX_CPU_ISA=AVX2 BERTMESH_KERNEL_ISA=avx2 $(PY) -m pytest -m int8 $(PYTEST_ARGS)
	BERTMESH_KERNEL_ISA=avx2 $(PY) -m pytest tests/server/test_native_attention.py $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not e2e and not gpu" $(PYTEST_ARGS)

test-e2e: venv toolchain
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

## the tests that need a CUDA device (tests/gpu): the CUDA engine against transformers at fp16/bf16, graphs
## replayed without new capture, launches per batch bounded
test-gpu: venv
	$(PY) -m pytest -m gpu tests/gpu $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy bertmesh_cli model_server operator/bertmesh_operator tests hack bench
	$(PY) -c 'import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())'

protos: venv
	$(PY) hack/gen_protos.py

## the CRD, the chart's generated templates and docs/crd.md, from the operator's sources (tests fail when stale)
generate: venv
	$(PY) hack/gen_crd.py
	$(PY) hack/gen_chart.py
	$(PY) hack/gen_crd_docs.py

toolchain:
	@hack/k8s-toolchain.sh
	@hack/third-party-crds.sh
	@hack/istiod.sh
	@hack/keda.sh

bench: venv
	$(PY) -m bench $(ARGS)

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache .pytest_cache
