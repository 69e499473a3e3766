"""LLaVA-format data: lazy records (``records``), safe image loading (``images``), per-record validation and the
bad-record policy (``validation``), the modality-length-grouped sampler (``sampler``) and ``aligngpt data check``
(``cli``). Kept import-free so that ``aligngpt --help`` stays fast; import the submodules directly."""
