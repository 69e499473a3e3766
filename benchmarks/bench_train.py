"""Training throughput of both AlignGPT stages on a small preset: tokens/s and achieved FLOP/s as a fraction of the
matmul peak measured in the same process.

    python benchmarks/bench_train.py [--threads 2] [--dtype fp32|bf16] [--steps 10] [--repeats 3] [--device cuda]
    python benchmarks/bench_train.py --preset toy [--change name=value ...]   (see bench_train_toy.py)

FLOPs per step are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (every matmul/conv actually run:
frozen vision tower forward, LLM forward and backward, gate, projector); the step time is the median (and min) over
``repeats`` timed windows of ``steps`` optimizer steps each. The peak is the best of several ``n x n`` matmuls in the
same dtype. Each stage applies its recipe (stage 1: projector + level table train, A = E[level]; stage 2: LLM +
projector + gate train).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, LlamaConfig

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.training.recipes import RecipeOptions, get_recipe

PRESETS = {
    "small": dict(
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    image_size=64, patch_size=8),
        text=dict(vocab_size=4000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        batch=8,
        text_tokens=96,
    ),
}  # fmt: skip
PEAK_SIZE = 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = PEAK_SIZE, repeats: int = 5) -> float:
    """Best FLOP/s of a ``size``-cubed matmul in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best


def build(preset: dict, mode: str) -> AlignGPTForConditionalGeneration:
    torch.manual_seed(0)
    config = AlignGPTConfig(
        vision_config=CLIPVisionConfig(**preset["vision"]).to_dict() | {"model_type": "clip_vision_model"},
        text_config=LlamaConfig(**preset["text"]).to_dict(),
        alignment_mode=mode,
    )
    return AlignGPTForConditionalGeneration(config)


def make_batch(model: AlignGPTForConditionalGeneration, preset: dict, stage: str) -> dict[str, torch.Tensor]:
    """Right-padded image rows: BOS, alignment slot, image positions, text; the second half of the text supervised."""
    config = model.config
    batch, text = preset["batch"], preset["text_tokens"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        3, config.text_config.vocab_size, (batch, 2 + config.num_image_tokens + text), generator=generator
    )
    ids[:, 0] = config.text_config.bos_token_id
    ids[:, 1] = config.alignment_token_id
    ids[:, 2 : 2 + config.num_image_tokens] = config.image_token_id
    labels = ids.clone()
    labels[:, : 2 + config.num_image_tokens + text // 2] = -100
    size = config.vision_config.image_size
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
    }
    if stage == "pretrain":
        out["alignment_levels"] = torch.randint(0, config.num_alignment_levels, (batch,), generator=generator)
    return out


def bench_stage(
    recipe_name: str, preset: dict, dtype: torch.dtype, steps: int, repeats: int, device: torch.device
) -> dict:
    recipe = get_recipe(recipe_name)
    model = build(preset, "adaptive").to(device)
    groups = recipe.apply(model, RecipeOptions())
    optimizer = torch.optim.AdamW([{"params": [p for _, p in g.params]} for g in groups], lr=1e-5)
    batch = {key: value.to(device) for key, value in make_batch(model, preset, recipe.stage).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = model(**batch, loss_positions="supervised").loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step()  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append((time.perf_counter() - start) / steps)
    tokens = int(batch["attention_mask"].sum())
    median, best = statistics.median(times), min(times)
    return {"recipe": recipe_name, "tokens": tokens, "flops": flops, "median_s": median, "min_s": best}


def main() -> None:
    import sys

    if "--preset" in sys.argv and sys.argv[sys.argv.index("--preset") + 1 :][:1] == ["toy"]:
        from bench_train_toy import main as toy_main  # the real engine on the toy world (its own options)

        sys.argv = [arg for i, arg in enumerate(sys.argv) if arg != "--preset" and sys.argv[i - 1] != "--preset"]
        return toy_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=[*sorted(PRESETS), "toy"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    peak = matmul_peak(dtype, device)
    print(f"device {device}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s ({PEAK_SIZE}^3)")  # fmt: skip
    print(f"{'stage':<10} {'tokens/step':>11} {'GFLOP/step':>10} {'step ms (med/min)':>18} {'tokens/s':>9} "
          f"{'GFLOP/s':>8} {'of peak':>8}")  # fmt: skip
    for recipe in ("pretrain", "finetune"):
        result = bench_stage(recipe, preset, dtype, args.steps, args.repeats, device)
        rate = result["flops"] / result["median_s"]
        print(
            f"{recipe:<10} {result['tokens']:>11} {result['flops'] / 1e9:>10.2f} "
            f"{result['median_s'] * 1e3:>9.1f}/{result['min_s'] * 1e3:<8.1f} "
            f"{result['tokens'] / result['median_s']:>9.0f} {rate / 1e9:>8.1f} {rate / peak:>8.1%}"
        )


if __name__ == "__main__":
    main()
