"""Cost of the multimodal machinery over a bare LLaMA, measured interleaved in one process.

Prints ratios (min and median over repeats) for a small preset: CLIP-336 geometry (576 image tokens, narrow tower),
LLaMA hidden 512 x 4 layers, vocab 32000, finetune-style conversations.

(a) training step (forward + backward) / floor, where the floor is a bare ``LlamaForCausalLM`` forward + backward on the
    identical final embedding sequence with full logits, plus the frozen vision forward; with full logits and with the
    LM head only at supervised positions (``loss_positions="supervised"``).
(b) prefill and per-token decode time / bare LLaMA ``generate`` on embeddings of the same lengths.
(c) batched greedy throughput at batch 8 / batch 1 (128 new tokens, the evaluation setting), with outputs checked
    equal to batch 1.
(d) (on request: ``--parts d``) decode per token with ``torch.compile`` (static cache, full graph) / eager, outputs
    checked equal.

Run: ``python benchmarks/bench_model.py [--repeats 3] [--threads 2] [--batches 1 4 8]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.processing import AlignGPTProcessor, add_marker_tokens, load_tokenizer

VOCAB = 32000
FIXTURE_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_tiny" / "base_llm"


def build(seed: int = 0) -> tuple[AlignGPTForConditionalGeneration, AlignGPTProcessor]:
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    # The fixture tokenizer (vocab 1000) only produces ids; the LLM's vocabulary is the 32000 of Vicuna, and the
    # marker tokens take the tokenizer's next ids (rows the LLM already has).
    tokenizer = load_tokenizer(FIXTURE_TOKENIZER)
    image_id, alignment_id = add_marker_tokens(tokenizer)
    config = AlignGPTConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=image_id,
        alignment_token_id=alignment_id,
    )
    model = AlignGPTForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=336)
    processor = AlignGPTProcessor.from_config(config, tokenizer, image_processor)
    return model, processor


def bare_llm(model: AlignGPTForConditionalGeneration) -> torch.nn.Module:
    """A plain causal LM made of the model's own decoder and LM head (shared, not copied): the floor."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(model.config.text_config)
    llm.model, llm.lm_head = model.language_model, model.lm_head
    return llm.to(model.device).eval()


def conversations(n: int) -> list[list[dict]]:
    turns = []
    for i in range(n):
        question = "<image>\n" + "Describe the picture in detail and name every object you can see " * (1 + i % 2)
        answer = "The picture shows a red car parked near a river with two boats and a green tree. " * (2 + i % 3)
        turns.append([{"from": "human", "value": question.strip()}, {"from": "gpt", "value": answer.strip()}])
    return turns


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (300 + 10 * i, 260), (40 * i % 255, 120, 200)) for i in range(n)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def summary(name: str, ours: list[float], floor: list[float]) -> None:
    ratios = [a / b for a, b in zip(ours, floor)]
    print(
        f"{name:<42} ours {statistics.median(ours) * 1e3:8.1f} ms  floor {statistics.median(floor) * 1e3:8.1f} ms  "
        f"ratio min {min(ratios):.3f} median {statistics.median(ratios):.3f}"
    )


def bench_training(model, processor, batch_size: int, repeats: int) -> None:
    samples = [processor.encode_conversation(c, im) for c, im in zip(conversations(batch_size), images(batch_size))]
    batch = processor.collate(samples).to(model.device)
    bare = bare_llm(model)
    with torch.no_grad():
        embeds, _ = model.embed_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None, None)

    def ours(positions: str) -> None:
        model.zero_grad(set_to_none=True)
        model(**batch, loss_positions=positions).loss.backward()

    def floor() -> None:
        bare.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.get_vision_features(batch["pixel_values"])
        out = bare(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()

    ours(positions="all"), floor()  # warm-up
    full, sparse, base = [], [], []
    for _ in range(repeats):
        full.append(timed(lambda: ours("all")))
        base.append(timed(floor))
        sparse.append(timed(lambda: ours("supervised")))
    length = batch["input_ids"].shape[1]
    summary(f"(a) train step b={batch_size} L={length} full logits", full, base)
    summary(f"(a) train step b={batch_size} L={length} supervised head", sparse, base)


def bench_inference(model, processor, repeats: int, new_tokens: int = 16) -> None:
    prompt = processor.generation_prompt("<image>\nDescribe the picture in detail.")
    batch = processor([prompt], images(1)).to(model.device)
    bare = bare_llm(model)
    with torch.no_grad():
        embeds, _ = model.embed_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None, None)
    common = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}

    def ours(n: int) -> None:
        model.generate(**batch, max_new_tokens=n, min_new_tokens=n, **common)

    def floor(n: int) -> None:
        with torch.no_grad():
            model.get_vision_features(batch["pixel_values"])
        bare.generate(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=n, min_new_tokens=n, **common
        )

    with torch.inference_mode():
        ours(2), floor(2)
        prefill, prefill_floor, decode, decode_floor = [], [], [], []
        for _ in range(repeats):
            one, one_floor = timed(lambda: ours(1)), timed(lambda: floor(1))
            many, many_floor = timed(lambda: ours(new_tokens)), timed(lambda: floor(new_tokens))
            prefill.append(one), prefill_floor.append(one_floor)
            (
                decode.append((many - one) / (new_tokens - 1)),
                decode_floor.append((many_floor - one_floor) / (new_tokens - 1)),
            )
    summary(f"(b) prefill L={batch['input_ids'].shape[1]}", prefill, prefill_floor)
    summary("(b) decode per token", decode, decode_floor)


def bench_batching(model, processor, repeats: int, batch_size: int = 8, new_tokens: int = 16) -> None:
    questions = [f"<image>\nQuestion number {i}: what is in the picture and why?" for i in range(batch_size)]
    prompts = [processor.generation_prompt(q) for q in questions]
    pictures = images(batch_size)
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        batched_ids = None

        def batched() -> None:
            nonlocal batched_ids
            inputs = processor(prompts, pictures).to(model.device)
            batched_ids = model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1] :]

        single_ids = []

        def one_by_one() -> None:
            single_ids.clear()
            for prompt, picture in zip(prompts, pictures):
                inputs = processor([prompt], [picture]).to(model.device)
                single_ids.append(model.generate(**inputs, **settings)[0, inputs["input_ids"].shape[1] :])

        batched_times, single_times = [], []
        for _ in range(repeats):
            batched_times.append(timed(batched))
            single_times.append(timed(one_by_one))
    same = all(torch.equal(batched_ids[i], single_ids[i]) for i in range(batch_size))
    speedups = [s / b for s, b in zip(single_times, batched_times)]
    print(
        f"(c) greedy throughput batch {batch_size} / batch 1: min {min(speedups):.2f} median "
        f"{statistics.median(speedups):.2f}  (outputs equal to batch 1: {same})"
    )


def compile_config():
    """Full-graph compilation of the decoding step; transformers compiles on accelerators only unless told."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True  # CPU too: that is where this benchmark runs
    return config


def bench_compiled_decode(model, processor, repeats: int, new_tokens: int = 32) -> None:
    """Decode per token with ``torch.compile`` (static cache, full graph) / eager (dynamic cache), same outputs."""
    prompt = processor.generation_prompt("<image>\nDescribe the picture in detail.")
    batch = processor([prompt], images(1)).to(model.device)
    common = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    compiled_settings = {"cache_implementation": "static", "compile_config": compile_config()}

    def run(n: int, compiled: bool) -> torch.Tensor:
        extra = compiled_settings if compiled else {}
        return model.generate(**batch, max_new_tokens=n, min_new_tokens=n, **common, **extra)

    with torch.inference_mode():
        started = time.perf_counter()
        same = torch.equal(run(new_tokens, True), run(new_tokens, False))
        run(1, True)
        compile_s = time.perf_counter() - started
        eager, compiled = [], []
        for _ in range(repeats):
            for is_compiled, store in ((False, eager), (True, compiled)):
                one = timed(functools.partial(run, 1, is_compiled))
                many = timed(functools.partial(run, new_tokens, is_compiled))
                store.append((many - one) / (new_tokens - 1))
    summary("(d) decode per token, compiled / eager", compiled, eager)
    print(f"    outputs equal: {same}; compilation and warm-up {compile_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c", "d"], help="d: torch.compile decode"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="answer length for (c); 128 is the evaluation setting"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = build()
    model.to(args.device)
    print(
        f"preset: 576 image tokens, LLaMA 512x4, vocab {VOCAB}; device {args.device}; threads {args.threads}; "
        f"repeats {args.repeats}"
    )
    if "a" in args.parts:
        model.train()
        for batch_size in args.batches:
            bench_training(model, processor, batch_size, args.repeats)
    model.eval()
    if "b" in args.parts:
        bench_inference(model, processor, args.repeats)
    if "c" in args.parts:
        bench_batching(model, processor, args.repeats, new_tokens=args.new_tokens)
    if "d" in args.parts:
        bench_compiled_decode(model, processor, args.repeats)


if __name__ == "__main__":
    main()
