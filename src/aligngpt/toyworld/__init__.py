"""A procedural image world and a tiny model zoo trained locally: the data source of the offline demo.

Modules: ``world`` (object types, partners, scenes), ``render`` (PIL images), ``text`` (captions, parser,
noisy captions), ``instructions`` (Q/A tasks and noise knobs), ``samples`` (one record with its image), ``evalsets``
(evaluation files), ``dataset`` (``write_dataset``: LLaVA-format files on disk) and ``zoo`` (``build_zoo``:
tokenizer, CLIP and LLaMA as Hugging Face folders). It sits below scoring and training and imports none of them;
the toy benchmark's scores live in :mod:`aligngpt.evaluation.benchmarks.toyworld_metrics`, the study that trains
and reports on this world in :mod:`aligngpt.demo`. See docs/toyworld.md and docs/architecture.md.
"""
