"""Level summary of a scoring run: counts and score range per level, as text and as a PNG plot."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aligngpt.fileio import atomic_write
from aligngpt.scoring.output import sidecar

HISTOGRAM_BINS = 20
_BAR_WIDTH = 40
_PLOT_SIZE = (10.0, 4.0)
_PLOT_DPI = 100


def summary_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The text and PNG summary files of the scoring output ``out``: ``<out stem>.summary.txt`` and ``.png``."""
    return sidecar(out, ".summary.txt"), sidecar(out, ".summary.png")


@dataclass
class LevelSummary:
    """``scores`` and ``levels`` are ``[M]`` for the M scored records; the rest count other records."""

    num_levels: int
    scores: np.ndarray
    levels: np.ndarray
    total_records: int
    text_only: int
    skipped: int = 0

    def text(self) -> str:
        m = self.scores.size
        lines = [
            f"records: {self.total_records}   scored (image) records: {m}   levels: {self.num_levels}",
            f"text-only records copied through unchanged (no level): {self.text_only}",
        ]
        if self.skipped:
            lines.append(f"bad image records skipped (left out of the output): {self.skipped}")
        lines.append("")
        lines.append(f"{'level':>5} {'count':>9} {'min':>9} {'max':>9} {'mean':>9}")
        for level in range(self.num_levels):
            chosen = self.scores[self.levels == level]
            if chosen.size:
                lo, hi, mean = chosen.min(), chosen.max(), chosen.mean()
                lines.append(f"{level:>5} {chosen.size:>9} {lo:>9.4f} {hi:>9.4f} {mean:>9.4f}")
            else:
                lines.append(f"{level:>5} {0:>9} {'-':>9} {'-':>9} {'-':>9}")
        if m:
            lines += ["", f"score histogram ({HISTOGRAM_BINS} bins, all levels):"]
            counts, edges = np.histogram(self.scores, bins=HISTOGRAM_BINS)
            peak = max(int(counts.max()), 1)
            for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
                lines.append(f"  [{lo:+.4f}, {hi:+.4f}) {int(c):>8} {'#' * round(_BAR_WIDTH * int(c) / peak)}")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Histogram of scores stacked by level, and the count per level (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_hist, ax_count) = plt.subplots(1, 2, figsize=_PLOT_SIZE, dpi=_PLOT_DPI)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)  # cheaper than tight_layout
        per_level = [self.scores[self.levels == k] for k in range(self.num_levels)]
        if self.scores.size:
            labels = [f"L{k}" for k in range(self.num_levels)]
            # one filled outline per level (not one bar per bin and level): fast to draw for any N
            ax_hist.hist(per_level, bins=HISTOGRAM_BINS * 2, stacked=True, histtype="stepfilled", label=labels)
            ax_hist.legend(loc="upper left", fontsize="small", ncol=2)
        ax_hist.set_xlabel("CLIP cosine similarity")
        ax_hist.set_ylabel("records")
        ax_hist.set_title("scores by level")
        ax_count.bar(range(self.num_levels), [x.size for x in per_level])
        ax_count.set_xlabel("level")
        ax_count.set_ylabel("records")
        ax_count.set_title(f"{self.text_only} text-only records have no level")
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)

    def write(self, out: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<out stem>.summary.txt`` and ``.summary.png`` next to ``out``; returns both paths."""
        txt, png = summary_paths(out)
        with atomic_write(txt) as f:
            f.write(self.text())
        self.plot(png)
        return txt, png
