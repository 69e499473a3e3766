"""Throughput of ``aligngpt score``'s code path relative to raw CLIP forward passes on pre-decoded images.

Builds a randomly initialised CLIP of real ViT-B size (weights do not matter for speed), writes JPEG images of a
typical LAION/CC size and a LLaVA-format JSON, then, in one process and alternating per repeat:

* raw: ``DualEncoder.similarity`` over the same batches with every image already decoded and preprocessed;
* loop: ``score_batches`` (records read, images decoded + preprocessed + tokenised in DataLoader workers, scores
  appended to the fsynced log), i.e. what ``aligngpt score`` spends per pair;
* end-to-end: ``score_dataset`` (adds indexing the file, bucketing, writing the output and the summary plot).

Prints pairs/s (min and median over repeats) and the ratios to raw (target: loop / raw >= 0.9).

    HF_HUB_OFFLINE=1 python benchmarks/bench_score.py --pairs 96 --repeats 3 --workers 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aligngpt.data.records import RecordFile
from aligngpt.scoring.encoder import DualEncoder
from aligngpt.scoring.run import ScoreConfig, image_record_indices, score_batches, score_dataset
from aligngpt.scoring.score_log import ScoreLog

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "street",
    "with",
    "on",
    "in",
    "near",
    "two",
    "people",
]
IMAGE_SIZE = (500, 375)  # a typical CC3M / LAION thumbnail
PRESETS = {  # (vision hidden, layers, heads, patch, resolution), (text hidden, layers, heads)
    "b32": ((768, 12, 12, 32, 224), (512, 12, 8)),
    "b16": ((768, 12, 12, 16, 224), (512, 12, 8)),
    "l14-336": ((1024, 24, 16, 14, 336), (768, 12, 12)),
}


def build_clip(folder: Path, preset: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    (v_hidden, v_layers, v_heads, patch, res), (t_hidden, t_layers, t_heads) = PRESETS[preset]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    text = dict(
        vocab_size=49408,
        hidden_size=t_hidden,
        intermediate_size=4 * t_hidden,
        num_hidden_layers=t_layers,
        num_attention_heads=t_heads,
        max_position_embeddings=77,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision = dict(
        hidden_size=v_hidden,
        intermediate_size=4 * v_hidden,
        num_hidden_layers=v_layers,
        num_attention_heads=v_heads,
        patch_size=patch,
        image_size=res,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=t_hidden)).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": res}, crop_size={"height": res, "width": res}).save_pretrained(folder)


def build_data(folder: Path, pairs: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root = folder / "images"
    root.mkdir()
    w, h = IMAGE_SIZE
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    records = []
    for i in range(pairs):
        pixels = np.clip(ramp * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.jpg", quality=90)
        caption = " ".join(rng.choice(WORDS, int(rng.integers(8, 30))))
        records.append(
            {
                "id": str(i),
                "image": f"{i}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": caption}],
            }
        )
    data = folder / "data.json"
    data.write_text(json.dumps(records))
    return data, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="b16")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_clip(folder / "clip", args.preset)
        data, root = build_data(folder, args.pairs)
        encoder = DualEncoder.load(str(folder / "clip"), device=args.device, dtype=args.dtype)
        config = ScoreConfig(
            data=data,
            images=root,
            clip=str(folder / "clip"),
            out=folder / "out.json",
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            dtype=args.dtype,
            progress=False,
            restart=True,
        )
        records = RecordFile(data)
        indices = image_record_indices(records)
        batches = [indices[k : k + args.batch_size] for k in range(0, len(indices), args.batch_size)]

        # raw baseline inputs: decoded, preprocessed and tokenised up front (not timed)
        prepared = []
        for batch in batches:
            recs = [records[i] for i in batch]
            images = [Image.open(root / r.image).convert("RGB") for r in recs]
            prepared.append((encoder.preprocess(images), encoder.tokenize([r.caption for r in recs])))

        def sync() -> None:
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()

        encoder.similarity(*prepared[0])  # warm-up
        raw, loop, e2e = [], [], []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for pixel_values, text in prepared:
                encoder.similarity(pixel_values, text)
            sync()
            raw.append(time.perf_counter() - t0)

            log = ScoreLog(folder / "bench.log.jsonl", {"bench": True})
            log.open(restart=True)
            t0 = time.perf_counter()
            score_batches(config, records, batches, list(range(len(batches))), encoder, log)
            sync()
            loop.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            score_dataset(config, encoder=encoder)
            e2e.append(time.perf_counter() - t0)

    n = len(indices)
    print(
        f"device {encoder.device} {encoder.dtype}, preset {args.preset}, {n} pairs of {IMAGE_SIZE} JPEG, "
        f"batch {args.batch_size}, workers {args.workers}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':<28}{'min s':>9}{'median s':>10}{'pairs/s (best)':>16}{'ratio min':>11}{'ratio median':>14}")
    for name, times in (("raw forward (pre-decoded)", raw), ("score loop", loop), ("score end-to-end", e2e)):
        ratio_min = min(raw) / min(times)
        ratio_med = statistics.median(raw) / statistics.median(times)
        print(
            f"{name:<28}{min(times):>9.3f}{statistics.median(times):>10.3f}{n / min(times):>16.1f}"
            f"{ratio_min:>11.3f}{ratio_med:>14.3f}"
        )


if __name__ == "__main__":
    main()
