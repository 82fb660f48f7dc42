"""compare's figures: overlays of curves (mean over seeds, min-max band; geometric for the LR, with rejected
proposals marked), the forest plot of paired differences, and the per-class heatmap. Plain matplotlib."""

import math
import statistics

from lradvisor.data import CLASSES

CURVES = [("lr", "learning rate", True), ("train_loss", "training loss", False),
          ("test_acc", "test accuracy (%)", False), ("grad_norm", "gradient norm", False)]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _band(ax, seeds, key, label, color, log):
    n = max(len(s["curves"][key]) for s in seeds)
    steps = list(range(1, n + 1))
    cols = [[s["curves"][key][i] for s in seeds if i < len(s["curves"][key])] for i in range(n)]
    # On a log axis the middle of 0.1 and 0.001 is 0.01, not 0.05: average LRs geometrically.
    mid = [math.exp(statistics.mean(math.log(v) for v in c)) if log else statistics.mean(c) for c in cols]
    ax.plot(steps, mid, label=label, color=color, lw=1.8)
    if len(seeds) > 1:
        ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=color, alpha=0.2, lw=0)


def _rejected(ax, seeds, color):
    """Proposals the rule turned down, at the epoch they were meant for (the one after the exchange)."""
    pts = [(step + 1, lr) for s in seeds
           for step, lr in zip(s["curves"]["advisor_proposed_lr_steps"], s["curves"]["advisor_proposed_lr"])
           if lr > 0 and dict(zip(s["curves"]["advisor_accepted_steps"], s["curves"]["advisor_accepted"])).get(step) == 0]
    if pts:
        ax.scatter(*zip(*pts), marker="x", color=color, s=30, zorder=3, label="rejected proposal")


def curves_figure(groups, labels, path, title, colors):
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    for ax, (key, label, log) in zip(axes.flat, CURVES):
        for name in labels:
            _band(ax, groups[name]["seeds"], key, name, colors[name], log)
            if key == "lr":
                _rejected(ax, groups[name]["seeds"], colors[name])
        ax.set(title=label, xlabel="epoch", yscale="log" if log else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds, geometric for the LR; band = min-max)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def forest(rows, path, margin):
    """Δ with its 95 % CI per row: how a difference of a few points should be read."""
    plt = _plt()
    rows = [r for r in rows if r["delta_vs_baseline"] is not None]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.45 * len(rows)), dpi=100)
    for i, r in enumerate(rows):
        color = {"better": "tab:green", "worse": "tab:red"}.get(r["verdict"], "tab:gray")
        if r["delta_ci_low"] is not None:
            ax.plot([r["delta_ci_low"], r["delta_ci_high"]], [i, i], color=color, lw=2)
        ax.plot(r["delta_vs_baseline"], i, "o", color=color)
        p = "" if r["p_value"] is None or math.isnan(r["p_value"]) else f"p={r['p_value']:.2g}"
        ax.annotate(f"n={r['pairs']} {p} {r['verdict']}", (1.01, i), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    if margin:
        ax.axvspan(-margin, margin, color="gray", alpha=0.15, lw=0)
    ax.set(yticks=range(len(rows)), yticklabels=[f"{r['arm']} vs {r['baseline']}" for r in rows],
           xlabel="Δ final test accuracy vs baseline (points), mean and 95 % CI over paired seeds")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap(groups, path):
    plt = _plt()
    labels = list(groups)
    grid = [[statistics.mean(s["class_acc"][c] for s in groups[a]["seeds"]) for c in CLASSES] for a in labels]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(labels)), dpi=100)
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set(xticks=range(len(CLASSES)), xticklabels=CLASSES, yticks=range(len(labels)), yticklabels=labels,
           title="final per-class test accuracy (%)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
