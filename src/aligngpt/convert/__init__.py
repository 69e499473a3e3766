"""Import of official AlignGPT / LLaVA-1.5 checkpoints."""
