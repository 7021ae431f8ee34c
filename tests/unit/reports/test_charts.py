"""The charts' money axis: every tick label distinct, whatever the scale of the bill."""

from __future__ import annotations

import pytest

from tierfleet.reports.charts import usd_tick


@pytest.mark.parametrize("top", [0.0004, 0.012, 0.5, 3.0, 47.0, 1_250.0, 98_000.0])
def test_tick_labels_are_distinct_at_every_scale(top: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=8).tick_values(0.0, top)
    labels = [usd_tick(t) for t in ticks if 0 <= t <= top * 1.05]
    assert len(labels) >= 3
    assert len(set(labels)) == len(labels), labels
