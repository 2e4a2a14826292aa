"""Which int8 product runs on which CPU (model_server.backend.int8_isa), checked against the real kernel."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model_server.backend.int8_isa import IsaFacts, choose_int8_path, detect_isa
from model_server.backend.onednn import (
    OneDnnInt8Linear,
    int8_path,
    limit_pair_sums,
    onednn_available,
    quantise_pair_safe,
    quantise_weights,
)

AVX2 = frozenset({"sse4_1", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}


@pytest.mark.parametrize(
    ("flags", "cap", "instruction"),
    [
        (AVX2, None, "vpmaddubsw"),  # AMD EPYC Zen 2/3, Intel Haswell..Comet Lake
        (AVX512, None, "vpmaddubsw"),  # Skylake-SP: AVX-512 without VNNI
        (AVX512 | {"avx512_vnni"}, None, "AVX512-VNNI"),
        (AVX512 | {"avx512_vnni"}, "AVX2", "vpmaddubsw"),
        (AVX512 | {"avx512_vnni"}, "avx512_core", "vpmaddubsw"),
        (AVX512 | {"avx512_vnni"}, "AVX512_CORE_VNNI", "AVX512-VNNI"),
        (AVX512 | {"avx512_vnni"}, "AVX2_VNNI", "vpmaddubsw"),  # no avx_vnni: oneDNN falls to AVX2 (measured)
        (AVX512 | {"avx512_vnni"}, "ALL", "AVX512-VNNI"),
        (AVX2 | {"avx_vnni"}, None, "AVX-VNNI"),  # Alder Lake
        (AVX2 | {"avx_vnni"}, "AVX2_VNNI", "AVX-VNNI"),
        (AVX2 | {"avx_vnni"}, "AVX512_CORE_VNNI", "vpmaddubsw"),  # that cap's mask lacks AVX2_VNNI
        (AVX512 | {"avx512_vnni"}, "NOT_AN_ISA", "vpmaddubsw"),  # unknown: the choice that is exact everywhere
        (frozenset(), None, "vpmaddubsw"),  # /proc/cpuinfo unreadable
    ],
)
def test_int8_path_follows_the_cpu_and_the_cap(flags: frozenset[str], cap: str | None, instruction: str) -> None:
    path = choose_int8_path(IsaFacts(flags, cap))
    assert path.instruction == instruction
    assert path.saturates == (instruction == "vpmaddubsw")
    assert ("limited" in path.describe()) == path.saturates
    if cap is not None and path.saturates and flags & {"avx512_vnni", "avx_vnni"}:
        assert f"ONEDNN_MAX_CPU_ISA={cap.upper()}" in path.reason


def test_isa_facts_come_from_cpuinfo_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert detect_isa(cpuinfo) == IsaFacts(frozenset({"fpu", "avx2", "avx512_vnni"}), "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # the current name wins, as in oneDNN
    assert detect_isa(cpuinfo).max_isa == "AVX512_CORE_VNNI"
    assert detect_isa(tmp_path / "missing").cpu_flags == frozenset()


def _pair_sums(quantised: torch.Tensor) -> torch.Tensor:
    """The two largest magnitudes of each aligned group of four inputs, added: [out, groups]."""
    rows, inputs = quantised.shape
    groups = torch.nn.functional.pad(quantised.float().abs(), (0, -inputs % 4)).view(rows, -1, 4)
    return groups.topk(2, dim=2).values.sum(dim=2)


@given(arrays("int8", st.tuples(st.integers(1, 6), st.integers(1, 19)), elements=st.integers(-127, 127)))
def test_limited_weights_cannot_saturate_and_change_only_what_could(weights: object) -> None:
    quantised = torch.from_numpy(weights)
    limited = limit_pair_sums(quantised)
    assert _pair_sums(limited).max() <= 128
    assert (limited.abs() <= quantised.abs()).all() and (limited.int() * quantised.int() >= 0).all()
    safe = (_pair_sums(quantised) <= 128).repeat_interleave(4, dim=1)[:, : quantised.shape[1]]
    assert torch.equal(limited[safe], quantised[safe])


@pytest.mark.int8
def test_this_cpus_int8_product_is_what_the_decision_says() -> None:
    """The minimal experiment behind the decision, on this process's real oneDNN kernel: worst-case operands
    (every activation at 255, weights at +-127) come out exact with VNNI and clipped without it; the weights
    the decision picks come out exact either way. Run by `make test` uncapped and with ONEDNN_MAX_CPU_ISA=AVX2."""
    if not onednn_available():
        pytest.fail("this torch build has no oneDNN: the CPU int8 path cannot be tested")
    torch.manual_seed(0)
    weight = torch.randint(-127, 128, (24, 64)).float()
    weight[:, 0] = 127.0  # every channel's scale is then 1/127 of it: the integers survive quantisation
    weight[0] = 127.0
    activations = torch.randint(0, 256, (6, 64), dtype=torch.uint8)
    activations[0] = 255

    def error(limit_pairs: bool) -> float:
        linear = torch.nn.Linear(64, 24)
        linear.weight.data = weight / 127
        quantised, scales = (quantise_pair_safe if limit_pairs else quantise_weights)(linear.weight.detach())
        exact = (activations.double() - 128) @ quantised.double().T * scales.double() / 127
        with torch.inference_mode():
            product = OneDnnInt8Linear(linear, limit_pairs=limit_pairs).product(activations).double()
        return float(((product - exact).norm() / exact.norm()).item())

    path = int8_path()
    assert error(path.saturates) < 1e-5, path.describe()
    assert (error(False) > 1e-2) == path.saturates, path.describe()


@pytest.mark.int8
def test_the_serving_log_says_which_int8_path_runs(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from model_server.backend.factory import create_engine
    from model_server.checkpoint import inspect_checkpoint
    from model_server.config import EngineConfig

    with caplog.at_level(logging.INFO, logger="model_server.backend.packed_cpu"):
        create_engine(inspect_checkpoint(tiny_models["embedding"]), EngineConfig(device="cpu", precision="int8"))
    assert f"packed engine: {int8_path().describe()}" in caplog.messages
