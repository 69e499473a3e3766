"""The model zoo shipped with the package: ``build_zoo``'s own output, kept as a finished cache.

``aligngpt demo`` needs a tokenizer, a CLIP and a LLaMA; training them takes about 2.5 minutes of the demo's
10 on two cores. The package therefore ships the parts that ``build_zoo(size="demo", seed=0)`` wrote (weights, configs
and each part's ``part.json``, whose key hashes every setting that made the part). ``build_zoo(..., shipped=True)``
copies a shipped part into the output folder only when its key equals the key today's settings give, so a change
of any zoo or world setting rebuilds that part instead of reusing a stale one. ``aligngpt demo --rebuild-zoo``
retrains everything; a test checks that a rebuild reaches the shipped quality.

Refresh the shipped files after changing the zoo: ``python -m aligngpt.toyworld.zoo.refresh`` (rebuilds and
replaces them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aligngpt.toyworld.zoo.parts import PART_FILE, finished_part

SHIPPED_ROOT = Path(__file__).parent / "shipped_zoo"
# (size, seed) of every shipped zoo: the demo's.
SHIPPED = (("demo", 0),)
# Written into a part copied from the package, so that a build without ``shipped`` retrains it.
SHIPPED_MARKER = "shipped.txt"


def shipped_dir(size: str, seed: int) -> Path:
    """Folder of the shipped zoo of ``size`` and ``seed`` (it may not exist)."""
    return SHIPPED_ROOT / f"{size}-seed{seed}"


def install_shipped_parts(zoo_dir: Path, keys: dict[str, tuple[str, dict]]) -> list[str]:
    """Copy every shipped part whose key matches ``keys`` (``{folder: (key, settings)}``) into ``zoo_dir``, unless
    ``zoo_dir`` already has that part finished. Each part is copied to a temporary sibling and renamed into place,
    so an interrupted copy never looks finished. Returns the names of the parts copied.
    """
    copied = []
    for name, (key, _) in keys.items():
        target = zoo_dir / name
        if finished_part(target, key) is not None:
            continue
        source = next((shipped_dir(*ship) / name for ship in SHIPPED if finished_part(shipped_dir(*ship) / name, key)),
                      None)  # fmt: skip
        if source is None:
            continue
        tmp = target.with_name(f".{name}.shipped-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # part.json last: the copy is a finished part only once everything else is in place
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(PART_FILE))
            (tmp / SHIPPED_MARKER).write_text(f"copied from the aligngpt package: {source}\n", encoding="utf-8")
            shutil.copy2(source / PART_FILE, tmp / PART_FILE)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        copied.append(name)
    return copied


def remove_shipped_parts(zoo_dir: Path) -> list[str]:
    """Delete the parts of ``zoo_dir`` that were copied from the package; returns their names."""
    removed = []
    for marker in sorted(Path(zoo_dir).glob(f"*/{SHIPPED_MARKER}")):
        (marker.parent / PART_FILE).unlink(missing_ok=True)  # first: a half-deleted part never looks finished
        shutil.rmtree(marker.parent)
        removed.append(marker.parent.name)
    return removed
