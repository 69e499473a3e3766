"""The toy world's local model zoo: a tokenizer, a tiny CLIP and a tiny LLaMA, trained on 2 CPU cores."""

from aligngpt.toyworld.zoo.build import SIZES, ZooSettings, build_zoo

__all__ = ["SIZES", "ZooSettings", "build_zoo"]
