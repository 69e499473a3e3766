"""``aligngpt demo``: the toy-world study, an app on top of the library (above evaluation; nothing imports it).

Modules: ``cli`` (the command), ``presets`` (sizes and studies), ``pipeline`` (the study: which steps and jobs, with
which settings), ``steps`` (the reusable step runner: ``steps.json`` cache and parallel jobs), ``progress`` (time
left), ``analysis`` (level and phrasing sweeps, gate statistics), ``verdict`` / ``noisy`` (computed verdicts),
``report`` (``report.md``, plots, ``summary.json``), ``gate_probe`` (the gate study's follow-up probes) and
``gate_measures`` (the instruments it uses).
The data it runs on comes from :mod:`aligngpt.toyworld`. See docs/toyworld.md and docs/architecture.md.
"""
