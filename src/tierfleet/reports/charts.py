"""Charts of the reports: grouped bars of dollars, as PNG files (matplotlib, the ``charts`` extra).

Shared by the spend report and the inventory projection so both read alike:
same bar layout, same dollar labels, biggest group first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..extras import require

__all__ = ["plot_bars", "usd", "usd_tick"]


def usd(x: float, _pos: object = None) -> str:
    """Dollars at a precision that suits the amount ($1,234 / $12.34 / $0.0123)."""
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.4f}" if x else "$0"


def usd_tick(x: float, _pos: object = None) -> str:
    if x == 0:
        return "$0"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    # Enough significant digits that neighbouring ticks (0.0125, 0.015) stay distinct.
    return f"${x:,.4g}"


def plot_bars(
    path: str | Path,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    title: str,
    xlabel: str,
    subtitle: str | None = None,
) -> Path:
    """Grouped horizontal bars, one group per label, one bar per ``(name, values, colour)``."""
    path = Path(path)
    n = max(len(labels), 1)
    # Imported here: matplotlib takes ~0.7 s to load, only charts need it, and it is
    # an extra (tierfleet[charts]): a report without a chart must work without it.
    require("charts", "matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(10, max(3.5, 1.0 + 0.6 * n * max(len(series), 1) / 2)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if not labels:
        ax.text(0.5, 0.5, "no records in this period", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        height = 0.8 / len(series)
        y = np.arange(len(labels))
        for i, (name, values, colour) in enumerate(series):
            pos = y - 0.4 + height * (i + 0.5)
            bars = ax.barh(pos, values, height=height, label=name, color=colour)
            ax.bar_label(bars, labels=[usd(v) for v in values], padding=3, fontsize=8)
        ax.set_yticks(y, labels=list(labels))
        ax.invert_yaxis()  # biggest first, read top-down
        ax.legend(loc="lower right")
        ax.margins(x=0.18)
    ax.xaxis.set_major_formatter(FuncFormatter(usd_tick))
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="#444444")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
