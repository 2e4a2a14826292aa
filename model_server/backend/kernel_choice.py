"""Which CPU kernels the packed engine runs: the candidates the flags allow, and the choice among them from
timings measured at load (model_server.backend.packed_cpu measures; this module only decides).

Why by measurement: which kernel wins depends on the processor, its instruction sets and the thread count. The
packed attention kernel is 1.2-5x PyTorch's attention with AVX-512, and its first AVX2 form was 10-30x slower
than PyTorch's (docs/benchmarks.md); oneDNN's projections win or lose by a few per cent depending on MKL's code
paths. The only safe default is the one measured on the machine that serves. Pure: no torch, no timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Another candidate replaces the baseline only when it is at least this much faster (mean over the shapes):
# timings at load are a few runs on a possibly busy machine, and a tie is no reason to leave PyTorch's code.
MARGIN = 0.05

PROJECTIONS = ("torch", "onednn")
ATTENTIONS = ("torch", "native")


@dataclass(frozen=True, slots=True, order=True)
class Kernels:
    """One combination: the projections' kernels (torch or onednn) and attention's (torch or native)."""

    projections: str
    attention: str

    def describe(self) -> str:
        """In words, for the startup log and the model info."""
        projections = "oneDNN" if self.projections == "onednn" else "PyTorch"
        attention = "packed kernel" if self.attention == "native" else "PyTorch SDPA"
        return f"{projections} projections + {attention} attention"


# PyTorch's own code for both: what runs anywhere, and what every other candidate must beat.
BASELINE = Kernels("torch", "torch")


def candidates(projections: str, attention: str, *, onednn: bool, native: bool) -> list[Kernels]:
    """The combinations the flags allow ('auto': both, where available), the most PyTorch-like first: the
    baseline the others are compared with."""
    projection_options = _options(projections, PROJECTIONS, available={"onednn": onednn})
    attention_options = _options(attention, ATTENTIONS, available={"native": native})
    return sorted(
        (Kernels(p, a) for p in projection_options for a in attention_options),
        key=lambda k: (k.projections != "torch") + (k.attention != "torch"),
    )


def _options(flag: str, names: Sequence[str], available: Mapping[str, bool]) -> list[str]:
    if flag == "auto":
        return [name for name in names if available.get(name, True)]
    return [flag if available.get(flag, True) else names[0]]  # forced but unavailable: PyTorch's (logged)


def choose(timings: Mapping[Kernels, Sequence[float]], margin: float = MARGIN) -> Kernels:
    """The fastest of the measured candidates (seconds per shape, every candidate the same shapes), by the mean
    of its time relative to the first candidate's (the baseline) over the shapes; another candidate wins only by
    `margin`."""
    if not timings:
        raise ValueError("no candidate was measured")
    baseline, *others = timings
    best, best_score = baseline, 1.0 - margin
    for candidate in others:
        score = relative(timings[candidate], timings[baseline])
        if score < best_score:
            best, best_score = candidate, score
    return best


def relative(times: Sequence[float], baseline: Sequence[float]) -> float:
    """Mean ratio of `times` to `baseline`, shape by shape (every shape counts alike, short or long)."""
    if len(times) != len(baseline) or not times:
        raise ValueError("candidates must be measured on the same shapes")
    return sum(t / b for t, b in zip(times, baseline, strict=True)) / len(times)


def summary(timings: Mapping[Kernels, Sequence[float]], chosen: Kernels, shapes: Sequence[str]) -> str:
    """One readable line: every candidate's milliseconds per shape, and the choice."""
    parts = []
    for candidate, times in timings.items():
        mark = " <- chosen" if candidate == chosen else ""
        parts.append(f"{candidate.describe()} {'/'.join(f'{t * 1e3:.1f}' for t in times)}{mark}")
    return f"ms for {'/'.join(shapes)}: " + "; ".join(parts)
