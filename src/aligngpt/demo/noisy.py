"""The noisy-tasks study (``aligngpt demo --study noisy-tasks``): its verdict, tables and gate plot.

The study's instruction data answer one caption phrasing (``DemoPreset.loose_prompts``) with stage-1-style partial
captions, every other prompt cleanly. Every stage-2 model then captions the evaluation images in every phrasing
(``analysis.caption_phrasing_sweep``), scored against the clean scenes. The questions:

* **Does the gate adapt?** For each seed, the *level shift* = the mean level expected under the gate's mean weights on
  the clean phrasings minus that on the loose phrasing (``analysis.gate_summary``'s ``mean_level``; positive = more
  weight on low levels for the loose prompts). The gate adapts when the shift exceeds ``level_shift_min`` in every
  seed; it is *uniform* when KL(mean weights || uniform) stays below ``uniform_kl_max`` for every phrasing and seed.
* **Does AlignGPT answer more cleanly than the others?** Caption F1 against the clean scenes, AlignGPT minus each
  variant paired by seed, on the clean phrasings (their mean) and on the loose phrasing, with the effect rule of
  :class:`aligngpt.demo.verdict.Difference`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from aligngpt.demo.presets import ALIGNGPT
from aligngpt.demo.verdict import Difference

GATE_PLOT = "gate_phrasings.png"


@dataclass(frozen=True)
class NoisyThresholds:
    """When the gate counts as adapting or as uniform (levels are indices 0..K-1 of the K local levels)."""

    level_shift_min: float = 0.5  # mean level (clean phrasings) - mean level (loose phrasing), every seed
    uniform_kl_max: float = 0.01  # nats: KL(mean gate weights || uniform), every phrasing and seed


NOISY_THRESHOLDS = NoisyThresholds()


def _short(prompt: str, loose: tuple[str, ...], eval_prompt: str) -> str:
    role = "loose" if prompt in loose else ("clean, the evaluation's" if prompt == eval_prompt else "clean")
    return f"«{prompt}» ({role})"


@dataclass(frozen=True)
class NoisyStudy:
    """The phrasing sweeps of one study: ``phrasings[f"phrasings/seed{s}/{variant}"][prompt]`` as recorded."""

    phrasings: dict
    seeds: list[int]
    variants: tuple[str, ...]
    prompts: tuple[str, ...]
    loose: tuple[str, ...]
    eval_prompt: str
    thresholds: NoisyThresholds = NOISY_THRESHOLDS

    @property
    def clean(self) -> tuple[str, ...]:
        return tuple(p for p in self.prompts if p not in self.loose)

    @property
    def images(self) -> int:
        return self.sweep(self.seeds[0], ALIGNGPT)[self.prompts[0]]["n"]

    def sweep(self, seed: int, variant: str) -> dict:
        return self.phrasings[f"phrasings/seed{seed}/{variant}"]

    def f1(self, seed: int, variant: str, prompts: tuple[str, ...]) -> float:
        """Caption F1 against the clean scenes, the mean over ``prompts``."""
        return statistics.mean(self.sweep(seed, variant)[p]["f1"] for p in prompts)

    def gate(self, seed: int, prompt: str) -> dict | None:
        return self.sweep(seed, ALIGNGPT)[prompt]["gate"]

    def level_shifts(self) -> list[float] | None:
        """Per seed: mean gate level on the clean phrasings minus that on the loose ones (``None`` without a gate)."""
        shifts = []
        for seed in self.seeds:
            gates = {p: self.gate(seed, p) for p in self.prompts}
            if any(g is None for g in gates.values()):
                return None
            clean = statistics.mean(gates[p]["mean_level"] for p in self.clean)
            loose = statistics.mean(gates[p]["mean_level"] for p in self.loose)
            shifts.append(clean - loose)
        return shifts

    def max_kl(self) -> float:
        return max(self.gate(s, p)["kl_from_uniform"] for s in self.seeds for p in self.prompts)

    def adapts(self) -> bool:
        shifts = self.level_shifts()
        return shifts is not None and all(shift > self.thresholds.level_shift_min for shift in shifts)

    def differences(self, other: str, prompts: tuple[str, ...]) -> Difference:
        per_seed = tuple(self.f1(s, ALIGNGPT, prompts) - self.f1(s, other, prompts) for s in self.seeds)
        return Difference(f"caption F1 vs {other}", per_seed)

    # --- report text -------------------------------------------------------------------------------------------
    def verdict_lines(self) -> list[str]:
        """Markdown lines for the top of the report: the study's question and its computed answer."""
        t = self.thresholds
        shifts = self.level_shifts()
        if shifts is None:
            gate_text = "not measured: AlignGPT's model reported no gate weights."
        else:
            shift_text = ", ".join(f"{x:+.3f}" for x in shifts)
            kl = self.max_kl()
            if self.adapts():
                gate_text = (f"**yes** — the loose phrasing gets more weight on low levels in every seed (level "
                             f"shift {shift_text} > {t.level_shift_min}; largest KL from uniform {kl:.3f} "
                             "nats).")  # fmt: skip
            elif kl < t.uniform_kl_max:
                gate_text = (f"**no, the gate stays uniform** — KL(mean weights || uniform) ≤ {kl:.4f} nats "
                             f"(< {t.uniform_kl_max}) for every phrasing and seed; level shift "
                             f"{shift_text}.")  # fmt: skip
            else:
                gate_text = (f"**no** — the level shift (clean − loose mean level) is {shift_text}, not above "
                             f"{t.level_shift_min} in every seed; largest KL from uniform {kl:.3f} nats.")  # fmt: skip
        lines = [
            "**Noisy-tasks question.** Every caption asked as "
            + ", ".join(f"«{p}»" for p in self.loose)
            + " was answered in training like a stage-1 *partial* caption (a lower alignment level is the right "
            "choice for exactly those prompts); all other prompts were answered cleanly. Does the gate give those "
            "prompts lower levels, and does AlignGPT then answer more cleanly than the baseline and the ablations? "
            "(Scored against the clean scenes in every phrasing.)",
            "",
            f"- **Does the gate adapt?** {gate_text}",
        ]
        others = [v for v in self.variants if v != ALIGNGPT]
        for name, prompts in (("clean phrasings", self.clean), ("loose phrasing", self.loose)):
            parts = []
            for other in others:
                d = self.differences(other, prompts)
                rule = "an effect" if d.is_effect and len(self.seeds) > 1 else "within the seed spread"
                parts.append(f"{other} {d.mean:+.3f} ± {d.std:.3f} ({rule})")
            lines.append(f"- **AlignGPT − each variant, caption F1 on the {name}:** " + "; ".join(parts) + ".")
        if len(self.seeds) == 1:
            lines.append("- One seed: no difference between variants is claimed.")
        return lines

    def section_lines(self) -> list[str]:
        """The report section: per-phrasing captions, paired differences and the gate per phrasing."""
        lines = [
            "## Noisy-tasks study: captions in every phrasing",
            "",
            f"Caption F1 / CHAIR_i of the {self.images} evaluation images asked in each phrasing, scored against "
            "the clean scenes (mean ± std over seeds).",
            "",
            "| phrasing | " + " | ".join(self.variants) + " |",
            "|---|" + "---|" * len(self.variants),
        ]
        for prompt in self.prompts:
            cells = []
            for variant in self.variants:
                f1 = [self.sweep(s, variant)[prompt]["f1"] for s in self.seeds]
                chair = [self.sweep(s, variant)[prompt]["chair_i"] for s in self.seeds]
                cells.append(f"{_mean_std(f1)} / {_mean_std(chair)}")
            lines.append(f"| {_short(prompt, self.loose, self.eval_prompt)} | " + " | ".join(cells) + " |")
        others = [v for v in self.variants if v != ALIGNGPT]
        lines += [
            "",
            "AlignGPT minus each variant, caption F1 paired by seed (in brackets: seeds with a positive difference):",
            "",
            "| phrasing | " + " | ".join(f"AlignGPT − {v}" for v in others) + " |",
            "|---|" + "---|" * len(others),
        ]
        for prompt in self.prompts:
            cells = []
            for other in others:
                d = self.differences(other, (prompt,))
                cells.append(f"{_mean_std(list(d.per_seed))} ({sum(x > 0 for x in d.per_seed)}/{len(d.per_seed)})")
            lines.append(f"| {_short(prompt, self.loose, self.eval_prompt)} | " + " | ".join(cells) + " |")
        example = self.sweep(self.seeds[0], ALIGNGPT)
        lines += ["", f"Example captions of image 0 (AlignGPT, seed {self.seeds[0]}): "
                  + "; ".join(f"«{p}» → «{example[p]['example']}»" for p in self.prompts), ""]  # fmt: skip
        if self.level_shifts() is None:
            return lines
        lines += [
            "### The gate per phrasing (AlignGPT)",
            "",
            f"![gate per phrasing]({GATE_PLOT})",
            "",
            "*KL* = KL(mean weights || uniform) in nats; *mean level* = the level index expected under the mean "
            "weights (uniform: the middle level; lower = more weight on low levels); *per-sample std* = the spread of "
            "the weights over the images, averaged over the levels.",
            "",
            "| seed | phrasing | mean weights E[0..] | KL | mean level | per-sample std |",
            "|---|---|---|---|---|---|",
        ]
        for seed in self.seeds:
            for prompt in self.prompts:
                g = self.gate(seed, prompt)
                lines.append(
                    f"| {seed} | {_short(prompt, self.loose, self.eval_prompt)} | "
                    f"{' '.join(f'{w:.3f}' for w in g['mean'])} | {g['kl_from_uniform']:.4f} | "
                    f"{g['mean_level']:.3f} | {g['per_sample_std']:.4f} |"
                )
        shifts = self.level_shifts()
        lines += ["", "Level shift (clean − loose mean level) per seed: " + ", ".join(f"{x:+.4f}" for x in shifts)
                  + ".", ""]  # fmt: skip
        return lines


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def plot_gate_phrasings(path, study: NoisyStudy, save) -> None:
    """Mean gate weight per local level for each phrasing, one panel per seed; the uniform weight dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = study.seeds
    figure, axes = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 3.4), sharey=True, squeeze=False)
    for axis, seed in zip(axes[0], seeds):
        for index, prompt in enumerate(study.prompts):
            gate = study.gate(seed, prompt)
            levels = range(len(gate["mean"]))
            style = "o-" if prompt in study.loose else "s--"
            role = "loose" if prompt in study.loose else "clean"
            axis.plot(levels, gate["mean"], style, color=f"C{index}", label=f"{role}: {prompt[:28]}…")
        width = len(study.gate(seed, study.prompts[0])["mean"])
        axis.axhline(1.0 / width, color="black", lw=1, ls=":", label=f"uniform 1/{width}")
        axis.set_xticks(range(width), [f"E[{i}]" for i in range(width)])
        axis.set_xlabel("local alignment level (0 = least aligned)")
        axis.set_title(f"seed {seed}")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean gate weight")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Stage 2: AlignGPT's gate per caption phrasing (the loose one should lean to low levels)")
    figure.tight_layout()
    save(figure, path)
