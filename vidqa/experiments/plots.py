"""The experiments' figures: layer importance (Experiment 1) and compression impact (Experiment 2).

matplotlib is imported inside each function and draws off-screen: plotting needs no display
and costs nothing to code that never plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidqa.experiments.stats import mean_pairwise_pearson
from vidqa.vlm.profiling.importance import Profile


def plot_importance(profiles: Sequence[Profile], path: Path, title: str = "") -> Path:
    """ROI x layer heatmaps and per-layer mean ± std, one row per metric (see module doc)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(profiles[0].scores)
    layers = profiles[0].layers
    n_vision = sum(layer.tower == "vision" for layer in layers)
    n_rows = sum(len(p.crop_ids) for p in profiles)
    width = min(22.0, max(12.0, 0.45 * len(layers)))  # inches: ~0.2 per layer per panel
    figure = Figure(figsize=(width, 1.2 + 3.2 * len(metrics)), layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas without pyplot: no global backend state
    axes = figure.subplots(len(metrics), 2, squeeze=False,
                           gridspec_kw={"width_ratios": [1.15, 1]})
    for row, metric in enumerate(metrics):
        _heatmap(figure, axes[row][0], profiles, metric, n_vision, n_rows)
        _mean_spread(axes[row][1], profiles, metric, n_vision)
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    return path


def _heatmap(figure: Any, ax: Any, profiles: Sequence[Profile], metric: str, n_vision: int,
             n_rows: int) -> None:
    matrix = np.concatenate([p.normalized(metric) for p in profiles])  # (Q * n_rois, L)
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    labels = [f"Q{q + 1} #{t}" if len(profiles) > 1 else f"track {t}"
              for q, p in enumerate(profiles) for t in p.crop_ids]
    ax.set_yticks(range(n_rows), labels, fontsize=7)
    for boundary in np.cumsum([len(p.crop_ids) for p in profiles])[:-1]:
        ax.axhline(boundary - 0.5, color="white", linewidth=1.5)
    _layer_axis(ax, profiles[0], n_vision)
    pearsons = [mean_pairwise_pearson(p.scores[metric]) for p in profiles]
    shown = ", ".join("n/a" if v is None or np.isnan(v) else f"{v:.2f}" for v in pearsons)
    ax.set_title(f"{metric}: ROI x layer (each ROI scaled to sum 1) — Pearson {shown}",
                 fontsize=9)


def _mean_spread(ax: Any, profiles: Sequence[Profile], metric: str, n_vision: int) -> None:
    x = np.arange(len(profiles[0].layers))
    for q, profile in enumerate(profiles):
        values = profile.normalized(metric)  # (n_rois, L)
        mean, std = values.mean(axis=0), values.std(axis=0)
        line, = ax.plot(x, mean, marker="o", markersize=3,
                        label=f"Q{q + 1}: {_short(profile.question, 50)}")
        ax.fill_between(x, mean - std, mean + std, alpha=0.25, color=line.get_color())
    ax.set_xlim(-0.5, len(x) - 0.5)
    _layer_axis(ax, profiles[0], n_vision)
    ax.set_ylabel("share of ROI's total", fontsize=8)
    ax.set_title(f"{metric}: mean ± std over ROIs", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def _layer_axis(ax: Any, profile: Profile, n_vision: int) -> None:
    labels = [f"{'v' if layer.tower == 'vision' else 't'}{layer.index}"
              for layer in profile.layers]
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    if 0 < n_vision < len(labels):
        ax.axvline(n_vision - 0.5, color="red", linestyle="--", linewidth=1.2)
        ax.text(n_vision - 0.5, 0.02, "vision | text", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="red",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    ax.set_xlabel("layer (v = vision encoder, t = text decoder)", fontsize=8)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def plot_impact(results: dict[str, Any], path: Path) -> Path:
    """Speedup, agreement and mean |Δ p_yes| vs fraction: colour = order, style = operator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    orders = sorted({r["order"] for r in results["rows"]})
    styles = {"int8": "-", "skip": "--", "int8+skip": ":", "tile": "-."}
    colors = dict(zip(orders, plt.get_cmap("tab10").colors, strict=False))
    panels = (("speedup", 1.0), ("agreement", 1.0), ("mean_dp_yes", 0.0))
    for order in orders:
        for operator, style in styles.items():
            rows = [r for r in results["rows"] if r["order"] == order and r["operator"] == operator]
            if not rows:
                continue
            xs = [0.0] + [r["fraction"] for r in rows]
            for ax, (key, at_zero) in zip(axes, panels, strict=True):
                ax.plot(xs, [at_zero] + [r[key] for r in rows], style, marker="o",
                        color=colors[order], label=f"{order} / {operator}")
    axes[0].set(xlabel="fraction of layers compressed (tile: of vision patches dropped)",
                ylabel="speedup vs uncompressed (x)",
                yscale="log", title=f"latency per ROI ({results['device']})")
    axes[1].set(xlabel="fraction of layers compressed", ylabel="agreement with uncompressed",
                title=f"yes/no answers ({results['n_rois']} ROIs)", ylim=(-0.02, 1.02))
    axes[1].axhline(0.98, color="grey", lw=0.8, ls="-.")
    axes[2].set(xlabel="fraction of layers compressed", ylabel="mean |Δ p_yes|",
                title="how far p_yes moves")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(orders), 5), fontsize=7)
    fig.suptitle(f"{results['model']}: {results['config']['question']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 5), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
