"""The verdict at the top of ``report.md``: did the study's runs converge, and what may be concluded from them.

Every threshold is a field of :class:`Thresholds`, defined once here. The checks:

* **Stage 1 grounded** (AlignGPT's stage-1 model, per seed; captions of the evaluation images with the alignment token
  forced to each level 0..N-1): F1 at level N-1 >= ``top_level_f1_min``, F1 at level 0 <= ``level0_f1_max``, and F1
  *rising* with the level: Spearman rank correlation between level and F1 >= ``rising_spearman_min`` and
  F1[N-1] > F1[0].
* **Stage 2 converged** (each stage-2 run, every variant and seed): caption F1 >= ``caption_f1_min``, POPE accuracy
  (mean of the random / popular / adversarial splits) >= ``pope_accuracy_min``, VQA accuracy >= ``vqa_accuracy_min``.
* ``converged`` = stage 1 grounded in every seed and every stage-2 run converged.
* With one seed no difference between variants is claimed. With several seeds and a converged study, AlignGPT minus
  the baseline (paired by seed) counts as an effect only when every seed's difference has the same sign and
  |mean| > ``effect_spread_multiple`` x the standard deviation of the per-seed differences.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from aligngpt.demo.analysis import spearman
from aligngpt.demo.presets import ALIGNGPT, BASELINE, STUDIES, get_preset
from aligngpt.toyworld.instructions import POPE_SPLITS

FULL_SIZE = "full"  # the preset whose seed spread single-seed differences are read against


@dataclass(frozen=True)
class Thresholds:
    """The verdict's thresholds; F1 and accuracies are fractions in [0, 1]."""

    top_level_f1_min: float = 0.85  # stage 1: caption F1 with the token forced to the highest level N-1
    level0_f1_max: float = 0.30  # stage 1: caption F1 at level 0 (trained on unrelated captions)
    rising_spearman_min: float = 0.8  # stage 1: Spearman(level, F1), together with F1[N-1] > F1[0]
    caption_f1_min: float = 0.90  # stage 2
    pope_accuracy_min: float = 0.80  # stage 2: mean accuracy of the three POPE splits
    vqa_accuracy_min: float = 0.60  # stage 2
    effect_spread_multiple: float = 1.0  # several seeds: |mean paired difference| > this x its std


THRESHOLDS = Thresholds()


def caption_f1(sets: dict) -> float:
    """Caption F1 of one evaluation's ``metrics["sets"]``."""
    return sets["caption"]["f1"]


def pope_accuracy(sets: dict) -> float:
    """POPE accuracy: the mean of the random, popular and adversarial splits' accuracies."""
    return statistics.mean(sets["pope"][split]["accuracy"] for split in POPE_SPLITS)


def vqa_accuracy(sets: dict) -> float:
    return sets["vqa"]["accuracy"]


STAGE2_METRICS = {"caption F1": caption_f1, "POPE accuracy": pope_accuracy, "VQA accuracy": vqa_accuracy}


@dataclass(frozen=True)
class Stage1Check:
    """AlignGPT's stage-1 model of one seed; ``f1`` is ``[N]``, caption F1 with the token forced to level 0..N-1."""

    seed: int
    f1: tuple[float, ...]
    thresholds: Thresholds = THRESHOLDS

    @property
    def spearman(self) -> float:
        return spearman(list(range(len(self.f1))), list(self.f1))

    @property
    def failures(self) -> list[str]:
        t, top = self.thresholds, len(self.f1) - 1
        failed = []
        if self.f1[top] < t.top_level_f1_min:
            failed.append(f"F1 at level {top} {self.f1[top]:.3f} < {t.top_level_f1_min:.2f}")
        if self.f1[0] > t.level0_f1_max:
            failed.append(f"F1 at level 0 {self.f1[0]:.3f} > {t.level0_f1_max:.2f}")
        rising = []
        if self.spearman < t.rising_spearman_min:
            rising.append(f"Spearman(level, F1) {self.spearman:.3f} < {t.rising_spearman_min:.1f}")
        if not self.f1[top] > self.f1[0]:
            rising.append(f"F1[{top}] {self.f1[top]:.3f} ≤ F1[0] {self.f1[0]:.3f}")
        if rising:
            failed.append(f"not rising: {' and '.join(rising)}")
        return failed

    @property
    def grounded(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Stage2Check:
    """One stage-2 run (variant, seed) on the toy benchmark."""

    seed: int
    variant: str
    caption_f1: float
    pope_accuracy: float
    vqa_accuracy: float
    thresholds: Thresholds = THRESHOLDS

    @property
    def failures(self) -> list[str]:
        t = self.thresholds
        checks = (
            ("caption F1", self.caption_f1, t.caption_f1_min),
            ("POPE accuracy", self.pope_accuracy, t.pope_accuracy_min),
            ("VQA accuracy", self.vqa_accuracy, t.vqa_accuracy_min),
        )
        return [f"{name} {value:.3f} < {minimum:.2f}" for name, value, minimum in checks if value < minimum]

    @property
    def converged(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Difference:
    """AlignGPT minus the baseline on one metric, paired by seed; ``per_seed`` is ``[S]``."""

    metric: str
    per_seed: tuple[float, ...]
    thresholds: Thresholds = THRESHOLDS

    @property
    def mean(self) -> float:
        return statistics.mean(self.per_seed)

    @property
    def std(self) -> float:
        return statistics.stdev(self.per_seed) if len(self.per_seed) > 1 else 0.0

    @property
    def is_effect(self) -> bool:
        """Only with several seeds: every seed agrees in sign and |mean| exceeds the seed spread."""
        same_sign = all(d > 0 for d in self.per_seed) or all(d < 0 for d in self.per_seed)
        spread = self.thresholds.effect_spread_multiple * self.std
        return len(self.per_seed) > 1 and same_sign and abs(self.mean) > spread


@dataclass(frozen=True)
class Verdict:
    stage1: tuple[Stage1Check, ...]
    stage2: tuple[Stage2Check, ...]
    differences: tuple[Difference, ...]  # empty without a baseline
    seeds: int
    size: str
    thresholds: Thresholds = THRESHOLDS

    @property
    def grounded(self) -> bool:
        return all(check.grounded for check in self.stage1)

    @property
    def converged(self) -> bool:
        return self.grounded and all(check.converged for check in self.stage2)

    def lines(self) -> list[str]:
        """Markdown lines for the top of ``report.md``."""
        t = self.thresholds
        top = len(self.stage1[0].f1) - 1 if self.stage1 else 0
        if self.converged:
            headline = "**Verdict: converged.** Stage 1 is grounded in every seed and every stage-2 run converged."
        else:
            if self.size == FULL_SIZE:
                where = "even this `--full` run did not reach them (docs/toyworld.md describes what made it converge)"
            elif self.size in STUDIES:
                where = f"the `{self.size}` study uses the `--full` recipe (docs/toyworld.md reports its runs)"
            else:
                where = "for the converged study run `aligngpt demo --full`"
            ungrounded = sum(not c.grounded for c in self.stage1)
            unconverged = sum(not c.converged for c in self.stage2)
            reasons = []
            if ungrounded:
                reasons.append(f"stage 1 is not grounded in {ungrounded} of {len(self.stage1)} seeds")
            if unconverged:
                reasons.append(f"{unconverged} of {len(self.stage2)} stage-2 runs did not converge")
            because = " and ".join(reasons)
            answers = "question (1) stays open" if self.grounded else "this run answers neither question"
            headline = (
                f"**Verdict: not converged.** {because[0].upper()}{because[1:]} (thresholds below), so {answers}; "
                f"{where}."
            )
        lines = [
            headline,
            "",
            "- **The questions.** (1) Does AlignGPT's alignment token help over the LLaVA-1.5 baseline trained on "
            "identical data, steps and seeds? (2) Does the stage-1 alignment level steer how faithful the captions "
            "are?",
            f"- **Stage 1 grounded** (AlignGPT's stage-1 model, per seed): caption F1 at level {top} ≥ "
            f"{t.top_level_f1_min:.2f}, at level 0 ≤ {t.level0_f1_max:.2f}, and rising with the level "
            f"(Spearman(level, F1) ≥ {t.rising_spearman_min:.1f} and F1[{top}] > F1[0]): "
            + "; ".join(_judged(f"seed {c.seed}", c.grounded, c.failures, "grounded") for c in self.stage1)
            + ".",
            f"- **Stage 2 converged** (each run): caption F1 ≥ {t.caption_f1_min:.2f}, POPE accuracy ≥ "
            f"{t.pope_accuracy_min:.2f}, VQA accuracy ≥ {t.vqa_accuracy_min:.2f}: "
            + "; ".join(_judged(f"{c.variant}/seed{c.seed}", c.converged, c.failures, "converged") for c in self.stage2)
            + ".",
            f"- **Seeds: {self.seeds}.** " + self._seed_text(),
            f"- **Answer to (1):** {self._answer_token()}",
            f"- **Answer to (2):** {self._answer_levels()}",
        ]
        return lines

    def _seed_text(self) -> str:
        if self.seeds == 1:
            return (
                "One seed allows no claim about a difference between variants: read any difference below against "
                f"the seed spread of `aligngpt demo --full` ({get_preset(FULL_SIZE).seeds} seeds, docs/toyworld.md)."
            )
        return (
            f"A difference between variants counts only if every seed agrees in sign and |mean| > "
            f"{self.thresholds.effect_spread_multiple:g} × the std of the per-seed differences (the paired table "
            "below)."
        )

    def _answer_levels(self) -> str:
        if not self.grounded:
            failed = ", ".join(f"seed {c.seed}" for c in self.stage1 if not c.grounded)
            return f"not shown: stage 1 is not grounded in {failed}."
        top = len(self.stage1[0].f1) - 1
        spans = ", ".join(f"{c.f1[0]:.2f} → {c.f1[top]:.2f}" for c in self.stage1)
        scope = "in this seed" if self.seeds == 1 else f"in all {self.seeds} seeds"
        return f"yes {scope}: caption F1 from level 0 to level {top}: {spans}."

    def _answer_token(self) -> str:
        if not self.differences:
            return "not asked: the baseline was not run."
        if not self.converged:
            return "undecided: not every run converged."
        if self.seeds == 1:
            return "undecided: one seed (see Seeds)."
        parts = [
            f"{d.metric} {d.mean:+.3f} ± {d.std:.3f} ({'an effect' if d.is_effect else 'within the seed spread'})"
            for d in self.differences
        ]
        verdict = "AlignGPT differs from the baseline" if any(d.is_effect for d in self.differences) else "no"
        return f"{verdict} — AlignGPT − baseline, paired by seed: " + "; ".join(parts) + "."


def _judged(name: str, ok: bool, failures: list[str], word: str) -> str:
    return f"{name} {word}" if ok else f"{name} **not {word}** ({', '.join(failures)})"


def level_f1(sweep: dict) -> tuple[float, ...]:
    """Caption F1 at levels 0..N-1 from one stage-1 level sweep ``{"0": {"f1": ...}, ...}``."""
    return tuple(sweep[str(level)]["f1"] for level in range(len(sweep)))


def judge(
    *, sweeps: dict, evaluations: dict, seeds: list[int], variants: tuple[str, ...], size: str,
    thresholds: Thresholds = THRESHOLDS,
) -> Verdict:  # fmt: skip
    """The verdict from the demo's results: ``sweeps`` and ``evaluations`` as recorded in ``steps.json``."""
    stage1 = tuple(
        Stage1Check(seed, level_f1(sweeps[f"level-sweep/seed{seed}/{ALIGNGPT}"]), thresholds) for seed in seeds
    )
    stage2 = []
    for seed in seeds:
        for variant in variants:
            sets = evaluations[f"eval/seed{seed}/{variant}"]["metrics"]["sets"]
            stage2.append(
                Stage2Check(seed, variant, caption_f1(sets), pope_accuracy(sets), vqa_accuracy(sets), thresholds)
            )
    differences = []
    if BASELINE in variants:
        for name, get in STAGE2_METRICS.items():
            per_seed = tuple(
                get(evaluations[f"eval/seed{s}/{ALIGNGPT}"]["metrics"]["sets"])
                - get(evaluations[f"eval/seed{s}/{BASELINE}"]["metrics"]["sets"])
                for s in seeds
            )
            differences.append(Difference(name, per_seed, thresholds))
    return Verdict(stage1, tuple(stage2), tuple(differences), len(seeds), size, thresholds)
