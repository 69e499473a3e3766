"""``python -m aligngpt.toyworld.zoo.refresh``: rebuild the zoo shipped with the package after a change to the zoo
(see :mod:`aligngpt.toyworld.zoo.shipped`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aligngpt.toyworld.zoo.build import ZOO_FILE, build_zoo
from aligngpt.toyworld.zoo.shipped import shipped_dir


def refresh_shipped(size: str = "demo", seed: int = 0, threads: int = 2) -> Path:
    """Rebuild the shipped zoo of ``size`` and ``seed`` from scratch and put it in the package."""
    target = shipped_dir(size, seed)
    staging = target.with_name(f".{target.name}.build")
    shutil.rmtree(staging, ignore_errors=True)
    build_zoo(staging, seed=seed, size=size, threads=threads)
    for leftover in staging.glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)
    (staging / ZOO_FILE).chmod(0o644)
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


if __name__ == "__main__":
    print(refresh_shipped())
