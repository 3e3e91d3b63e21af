"""The study's picture: each model's COVID probability per image, in reading order.

A run of positive slices, a single outlier and a series that failed to decode are
easier to see on one line than in a table of hundreds of rows. Drawn with
matplotlib's object API (no pyplot: its global state is not safe in threaded web
workers), imported only when a plot is asked for, so importing the app stays cheap.
"""

from __future__ import annotations

import io
import math

from inference.registry import ARCHITECTURES

COLOURS = ["#0f5b78", "#b3261e", "#1e7a46", "#8a5a00", "#6a3d9a", "#c2185b"]
WIDTH_IN, HEIGHT_IN, DPI = 10.0, 3.4, 100  # 1000 x 340 pixels: readable on a phone too


def model_series(view: dict) -> list[tuple[str, float | None, list[float]]]:
    """(architecture, threshold, probability per image) for each model, NaN where an
    image has no answer from that model (it failed): NaN breaks the line into a gap."""
    models = [(m["architecture"], m.get("threshold")) for m in view.get("models") or []]
    known = {architecture for architecture, _ in models}
    for image in view["images"]:  # a model that answered but is not listed (defensive)
        for result in image.get("results") or []:
            if result["architecture"] not in known:
                known.add(result["architecture"])
                models.append((result["architecture"], result.get("threshold")))
    series = []
    for architecture, threshold in models:
        values = []
        for image in view["images"]:
            found = [r["covid_probability"] for r in image.get("results") or []
                     if r["architecture"] == architecture]
            values.append(float(found[0]) if found else math.nan)
        series.append((architecture, threshold, values))
    return series


def series_boundaries(view: dict) -> list[float]:
    """x positions between images of different DICOM series (none for one series)."""
    uids = [image.get("series_uid") for image in view["images"]]
    if len(set(uids)) < 2:
        return []
    return [i - 0.5 for i in range(1, len(uids)) if uids[i] != uids[i - 1]]


def probability_plot_png(view: dict) -> bytes:
    """The plot as PNG bytes: lines and markers per model, dashed thresholds."""
    from matplotlib.figure import Figure  # lazily: matplotlib costs ~0.3 s to import

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    count = len(view["images"])
    xs = list(range(count))
    marker_size = 4 if count <= 60 else 2
    for n, (architecture, threshold, values) in enumerate(model_series(view)):
        colour = COLOURS[n % len(COLOURS)]
        name = ARCHITECTURES[architecture].name if architecture in ARCHITECTURES \
            else architecture
        axes.plot(xs, values, color=colour, linewidth=1.2, marker="o",
                  markersize=marker_size, label=name)
        if threshold is not None:
            axes.axhline(float(threshold), color=colour, linestyle="--", linewidth=1,
                         label=f"{name} threshold {float(threshold):.2f}")
    for x in series_boundaries(view):
        axes.axvline(x, color="#1b2733", linewidth=1, linestyle=":", zorder=3)
    axes.set_ylim(0, 1)
    axes.set_xlim(-0.5, max(count - 0.5, 0.5))
    axes.set_xlabel("Image index (reading order)")
    axes.set_ylabel("COVID probability")
    axes.grid(axis="y", color="#dfe6ee", linewidth=0.6)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                    frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
