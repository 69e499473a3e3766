"""The 12 AlignGPT benchmarks, by name.

>>> bench = get_benchmark("pope", pair_by="question_id")
>>> items = bench.load("playground/data/eval/pope")
"""

from __future__ import annotations

from aligngpt.errors import UserError
from aligngpt.evaluation.benchmarks.base import Benchmark
from aligngpt.evaluation.benchmarks.gqa import GQA
from aligngpt.evaluation.benchmarks.llava_bench import LLaVABench
from aligngpt.evaluation.benchmarks.mm_vet import MMVet
from aligngpt.evaluation.benchmarks.mmbench import MMBench, MMBenchCN
from aligngpt.evaluation.benchmarks.mme import MME
from aligngpt.evaluation.benchmarks.pope import POPE
from aligngpt.evaluation.benchmarks.scienceqa import ScienceQAImg
from aligngpt.evaluation.benchmarks.seed_bench import SEEDBench
from aligngpt.evaluation.benchmarks.textvqa import TextVQA
from aligngpt.evaluation.benchmarks.toyworld import ToyWorld
from aligngpt.evaluation.benchmarks.vizwiz import VizWiz
from aligngpt.evaluation.benchmarks.vqav2 import VQAv2

# In the order of the paper's results table (docs/evaluation.md), then the offline toy world.
PAPER_BENCHMARKS: tuple[type[Benchmark], ...] = (
    VQAv2, GQA, VizWiz, ScienceQAImg, TextVQA, POPE, MME, MMBench, MMBenchCN, SEEDBench, LLaVABench, MMVet,
)  # fmt: skip
BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (*PAPER_BENCHMARKS, ToyWorld)}
_ALIASES = {alias: cls.name for cls in BENCHMARKS.values() for alias in cls.aliases}


class UnknownBenchmarkError(UserError, ValueError):
    """Raised for a benchmark name that is neither a known name nor an alias."""


def canonical_name(name: str) -> str:
    """Canonical benchmark name for ``name`` (case-insensitive, ``-``/``_`` interchangeable, aliases)."""
    key = name.strip().lower()
    for candidate in (key, key.replace("-", "_")):
        if candidate in BENCHMARKS:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
        if candidate.replace("_", "-") in _ALIASES:
            return _ALIASES[candidate.replace("_", "-")]
    raise UnknownBenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def get_benchmark(name: str, **options) -> Benchmark:
    """An instance of the named benchmark; ``options`` are its constructor keywords (e.g. ``pair_by``)."""
    return BENCHMARKS[canonical_name(name)](**options)


__all__ = ["BENCHMARKS", "PAPER_BENCHMARKS", "Benchmark", "UnknownBenchmarkError", "canonical_name", "get_benchmark"]
