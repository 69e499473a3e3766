"""Small text bar charts of the gate's weights for terminals."""

from __future__ import annotations

from collections.abc import Sequence

BAR_WIDTH = 30
_FULL = "█"
_PARTIAL = " ▏▎▍▌▋▊▉"  # eighths of a cell


def bar(value: float, scale: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of ``value / scale`` of ``width`` cells, with eighth-cell resolution."""
    if scale <= 0:
        return ""
    eighths = round(max(0.0, min(1.0, value / scale)) * width * len(_PARTIAL))
    full, rest = divmod(eighths, len(_PARTIAL))
    return _FULL * full + (_PARTIAL[rest] if rest else "")


def alignment_chart(weights: Sequence[float], width: int = BAR_WIDTH) -> list[str]:
    """One line per local alignment level: ``level k  ███▍  0.143``.

    Bars are scaled to the largest weight so that small differences stay visible; the numbers are the exact α.
    The last level (the global one, always weighted 1) is not part of α and is not drawn.
    """
    if not weights:
        return []
    top = max(weights)
    label_width = len(str(len(weights) - 1))
    return [
        f"level {index:>{label_width}} {bar(value, top, width):<{width}} {value:.3f}"
        for index, value in enumerate(weights)
    ]
