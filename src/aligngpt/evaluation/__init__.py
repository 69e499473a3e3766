"""Evaluation on the 12 AlignGPT benchmarks: loaders, official post-processing and metrics, submission
files, GPT judge client and the ``aligngpt eval`` commands. See ``docs/evaluation.md``."""
