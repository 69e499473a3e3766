"""Run equality cases through vLLM with the aligngpt plugin (runs in the vLLM environment).

Input (``--cases``, JSON): ``{"max_new_tokens": n, "cases": [{"name", "prompt", "image" (a PNG path or null),
"alignment_mode" (or null: the folder's)}], "batches": [[case names...]]}``. Output (``--out``, JSON):
``{"batches": [{name: [token ids]}], "pixel_values": {image path: nested list}, "prompt_ids": {name: ids}}``.

Every batch goes through one ``LLM.generate`` call (continuous batching of mixed lengths), with prefix caching on
and chunked prefill in chunks of ``--chunk`` tokens, float32, eager, greedy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--cases", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--chunk", type=int, default=8, help="prefill chunk (max_num_batched_tokens)")
    args = parser.parse_args()

    from PIL import Image
    from vllm import LLM, SamplingParams

    spec = json.loads(args.cases.read_text())
    llm = LLM(
        model=args.model,
        tokenizer_mode="aligngpt",
        dtype="float32",
        enforce_eager=True,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        max_num_batched_tokens=args.chunk,
        max_num_seqs=8,
        max_model_len=512,
        limit_mm_per_prompt={"image": 1},
        seed=0,
    )
    cases = {case["name"]: case for case in spec["cases"]}
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"])
    images = {path: Image.open(path).convert("RGB") for path in {c["image"] for c in cases.values() if c["image"]}}

    def request(case: dict) -> dict:
        item: dict = {"prompt": case["prompt"]}
        if case["image"]:
            item["multi_modal_data"] = {"image": images[case["image"]]}
            if case.get("alignment_mode"):
                item["mm_processor_kwargs"] = {"alignment_mode": case["alignment_mode"]}
        return item

    results = []
    for batch in spec["batches"]:
        outputs = llm.generate([request(cases[name]) for name in batch], params, use_tqdm=False)
        results.append({name: list(out.outputs[0].token_ids) for name, out in zip(batch, outputs)})

    tokenizer = llm.get_tokenizer()
    prompt_ids = {name: tokenizer.encode(case["prompt"]) for name, case in cases.items()}
    from aligngpt_vllm.processing import preprocess_images
    from transformers import AutoImageProcessor

    image_processor = AutoImageProcessor.from_pretrained(args.model, backend="pil")
    aspect = json.loads((Path(args.model) / "config.json").read_text()).get("image_aspect_ratio", "pad")
    pixels = {path: preprocess_images([image], image_processor, aspect)[0].tolist() for path, image in images.items()}
    args.out.write_text(json.dumps({"batches": results, "prompt_ids": prompt_ids, "pixel_values": pixels}))


if __name__ == "__main__":
    main()
