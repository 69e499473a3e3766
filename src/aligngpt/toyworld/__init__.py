"""A procedural image world and a tiny model zoo trained locally, so the whole pipeline runs offline.

Modules: ``world`` (object types, partners, scenes), ``render`` (PIL images), ``text`` (captions, parser,
noisy captions), ``instructions`` (Q/A tasks and noise knobs), ``evalsets`` and ``metrics`` (evaluation files
and scores), ``dataset`` (``write_dataset``: LLaVA-format files on disk) and ``zoo`` (``build_zoo``: tokenizer,
CLIP and LLaMA as Hugging Face folders). See docs/toyworld.md.
"""
