"""Sizes of the toy-world demo: ``smoke`` (tests), ``default`` (``make demo``, <= 10 min) and ``full`` (<= 60 min);
and the studies (``aligngpt demo --study NAME``): ``noisy-tasks`` (<= 60 min), and its quick check ``noisy-smoke``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aligngpt.data.constants import DEFAULT_NUM_LEVELS as NUM_LEVELS
from aligngpt.toyworld.instructions import CAPTION_PROMPTS

BASELINE = "baseline"
ALIGNGPT = "aligngpt"
PREFIX = "prefix"
ABLATIONS = ("global", "local", "uniform")
ALL_VARIANTS = (ALIGNGPT, BASELINE, PREFIX, *ABLATIONS)
# alignment_mode of each variant. ``prefix`` is a control: the baseline plus one learned token after BOS that carries
# no level (``fixed:<N-1>`` in both stages), to tell an effect of the levels from one of an extra token.
VARIANT_MODES = {
    ALIGNGPT: "adaptive", BASELINE: "none", PREFIX: f"fixed:{NUM_LEVELS - 1}",
    "global": "global", "local": "local", "uniform": "uniform",
}  # fmt: skip
# The stage-1 model each variant's stage 2 starts from: the ablations reuse AlignGPT's level-conditioned stage 1.
STAGE1_SOURCE = {ALIGNGPT: ALIGNGPT, BASELINE: BASELINE, PREFIX: PREFIX, **{a: ALIGNGPT for a in ABLATIONS}}


@dataclass(frozen=True)
class DemoPreset:
    """Everything the demo varies with its size. Steps are optimizer steps of ``pretrain_batch_size`` (stage 1) or
    ``finetune_batch_size`` (stage 2) samples."""

    n_pretrain: int
    n_finetune: int
    n_eval: int
    zoo_size: str
    pretrain_steps: int
    finetune_steps: int
    pretrain_batch_size: int
    finetune_batch_size: int
    # Micro-batches of the accumulation rounds a step is cut into, per stage. The sampler sorts a step's samples by
    # length into its rounds, so padding falls while the step's samples and gradient stay the same; stage 2's
    # conversations vary more in length than stage 1's captions (measured in docs/toyworld.md).
    pretrain_micro_batch_size: int = 16
    finetune_micro_batch_size: int = 8
    seeds: int = 1
    variants: tuple[str, ...] = (ALIGNGPT, BASELINE)
    pretrain_lr: float = 1e-3
    finetune_lr: float = 1e-3
    llm_lr_scale: float = 0.5  # stage 1 also trains the LLM at half the LR (toy recipe, see docs/toyworld.md)
    image_pool_stride: int = 2  # 6x6 patches -> 9 image tokens
    # > 1 sorts the samples of that many steps by length: 1.6x faster steps here, but stage 2 then failed to converge
    # (docs/toyworld.md), so the presets keep the official order.
    length_group_steps: int = 1
    eval_batch_size: int = 64
    caption_tokens: int = 40
    noisy_tasks: tuple[str, ...] = ()
    noise_fraction: float = 0.25
    instruction_weights: dict[str, float] = field(default_factory=dict)
    # Caption phrasings whose answers are drawn like stage-1 "partial" captions (instructions.InstructionConfig);
    # a study with loose prompts also captions the evaluation images in every phrasing (the phrasing sweep).
    loose_prompts: tuple[str, ...] = ()
    loose_fraction: float = 1.0


PRESETS: dict[str, DemoPreset] = {
    "smoke": DemoPreset(
        n_pretrain=96, n_finetune=96, n_eval=6, zoo_size="smoke", pretrain_steps=3, finetune_steps=3,
        pretrain_batch_size=8, finetune_batch_size=8, pretrain_micro_batch_size=4,
        finetune_micro_batch_size=4, eval_batch_size=16, caption_tokens=12,
        variants=(ALIGNGPT, BASELINE, PREFIX), length_group_steps=2,
    ),
    # Stage 1 must run long enough for the LLM to learn to read the image tokens; then a short stage 2 converges.
    # Steps of 32 (stage 1) and 16 (stage 2) samples reach that regime with about half the samples that steps of 64
    # needed (docs/toyworld.md, "Fewer samples to the converged regime").
    "default": DemoPreset(
        n_pretrain=4000, n_finetune=5000, n_eval=150, zoo_size="demo", pretrain_steps=1500, finetune_steps=1000,
        pretrain_batch_size=32, finetune_batch_size=16,
    ),
    # The study: 3 seeds, AlignGPT, the baseline and the paper's ablations (``prefix`` on request: --variants).
    "full": DemoPreset(
        n_pretrain=4000, n_finetune=5000, n_eval=150, zoo_size="demo", pretrain_steps=1500, finetune_steps=1000,
        pretrain_batch_size=32, finetune_batch_size=16, seeds=3, variants=(ALIGNGPT, BASELINE, *ABLATIONS),
    ),
}  # fmt: skip

# The noisy-tasks study: the `full` world, recipe and seeds, except that every caption asked in one phrasing is answered
# like a stage-1 "partial" caption (the evaluation's phrasing stays clean), with all six variants.
LOOSE_PROMPT = CAPTION_PROMPTS[2]
STUDIES: dict[str, DemoPreset] = {
    "noisy-tasks": replace(PRESETS["full"], variants=ALL_VARIANTS, loose_prompts=(LOOSE_PROMPT,)),
    "noisy-smoke": replace(PRESETS["smoke"], variants=ALL_VARIANTS, loose_prompts=(LOOSE_PROMPT,)),
}


def get_preset(name: str) -> DemoPreset:
    """A size (``PRESETS``) or a study (``STUDIES``) by name; unknown names raise ``ValueError`` listing both."""
    if name in PRESETS:
        return PRESETS[name]
    if name in STUDIES:
        return STUDIES[name]
    raise ValueError(f"unknown demo size or study {name!r}; sizes: {', '.join(PRESETS)}; studies: {', '.join(STUDIES)}")
