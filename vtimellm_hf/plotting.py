"""Timelines of moments: predicted spans against the truth, one row per query or video."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TimelineRow:
    """One row of a timeline: a label, the video's duration, predicted and true `(start, end)` spans in seconds."""

    label: str
    duration: float
    predicted: Sequence[tuple[float, float]] = field(default_factory=list)
    truth: Sequence[tuple[float, float]] = field(default_factory=list)


def plot_timeline(rows: Sequence[TimelineRow], path: str | Path, title: str = "") -> Path:
    """Draws the rows (truth above, prediction below, each on its video's time axis) into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Timelines need matplotlib: `pip install matplotlib`.") from error
    if not rows:
        raise ValueError("A timeline needs at least one row.")
    figure, axes = plt.subplots(len(rows), 1, figsize=(9, 0.9 * len(rows) + 0.8), squeeze=False)
    for axis, row in zip(axes[:, 0], rows):
        axis.broken_barh([(start, end - start) for start, end in row.truth], (0.55, 0.35), color="#2a9d8f")
        axis.broken_barh([(start, end - start) for start, end in row.predicted], (0.1, 0.35), color="#e76f51")
        axis.set_xlim(0, row.duration)
        axis.set_ylim(0, 1)
        axis.set_yticks([0.275, 0.725], ["predicted", "truth"], fontsize=7)
        axis.set_title(row.label, fontsize=8, loc="left")
        axis.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("seconds")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
