"""CLIP alignment scoring: cosine similarity of image-caption pairs (``encoder``, ``batches``, ``run``), equal-count
levels by rank (``bucketing``), re-bucketing (``levels``), output and summary; commands ``score`` and ``levels``."""
