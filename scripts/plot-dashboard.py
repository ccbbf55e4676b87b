"""Draws the panels `promql-names eval` computed (one JSON list of panels, each with its series)
as a grid like Grafana's: python3 plot-dashboard.py PANELS.json OUT.png"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

UNITS = {
    "s": lambda v: f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.1f} s",
    "bytes": lambda v: f"{v / 1048576:.1f} MiB" if abs(v) >= 1048576 else f"{v / 1024:.0f} KiB",
    "rps": lambda v: f"{v:g}/s",
    "ops": lambda v: f"{v:g}/s",
}


def main(src: str, out: str) -> None:
    panels = json.load(open(src))
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    end = max((pt[0] for p in panels for s in p["series"] or [] for pt in s["points"] or []), default=1)
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.1 * rows), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, panels):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], loc="left", fontsize=11, color="#ccccdc")
        for s in panel["series"] or []:
            if s.get("points"):
                xs, ys = zip(*s["points"])
                ax.plot(xs, ys, linewidth=1.4, label=s["legend"])
        if not any(s.get("points") for s in panel["series"] or []):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#8e8e8e")
        fmt = UNITS.get(panel.get("unit"))
        if fmt:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, f=fmt: f(v)))
        ax.set_xlim(0, end)
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.tick_params(colors="#8e8e8e", labelsize=8)
        ax.set_xlabel("seconds into the run", fontsize=8, color="#8e8e8e")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("log-processor (deploy/grafana/log-processor.json, evaluated over a real run)", color="#ccccdc")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
