"""AlignGPT: multi-modal LLMs with adaptive alignment capability (arXiv 2405.14129)."""

__version__ = "0.1.0"
