"""compare's figures: overlays of curves (mean over seeds, min-max band; geometric for the LR, with rejected
proposals marked), the forest plot of paired differences, and the per-class heatmap; with several data sets,
one row of panels per data set (and the pooled rows last in the forest plot). Plain matplotlib."""

import math
import re
import statistics

from lradvisor.data.registry import DATASETS

CURVES = [
    ("lr", "learning rate", True),
    ("train_loss", "training loss", False),
    ("test_acc", "test accuracy (%)", False),
    ("grad_norm", "gradient norm", False),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, seeds, key, label, color, log, dash="-"):
    n = max(len(s["curves"][key]) for s in seeds)
    steps = list(range(1, n + 1))
    cols = [[s["curves"][key][i] for s in seeds if i < len(s["curves"][key])] for i in range(n)]
    # On a log axis the middle of 0.1 and 0.001 is 0.01, not 0.05: average LRs geometrically.
    mid = [math.exp(statistics.mean(math.log(v) for v in c)) if log else statistics.mean(c) for c in cols]
    ax.plot(steps, mid, label=label, color=color, lw=1.8, ls=dash)
    if len(seeds) > 1:
        ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=color, alpha=0.2, lw=0)


def _rejected(ax, seeds, color):
    """Proposals the rule turned down, at the epoch they were meant for (the one after the exchange)."""
    pts = [
        (step + 1, lr)
        for s in seeds
        for step, lr in zip(s["curves"]["advisor_proposed_lr_steps"], s["curves"]["advisor_proposed_lr"])
        if lr > 0 and dict(zip(s["curves"]["advisor_accepted_steps"], s["curves"]["advisor_accepted"])).get(step) == 0
    ]
    if pts:
        ax.scatter(*zip(*pts), marker="x", color=color, s=30, zorder=3, label="rejected proposal")


DASHES = ("-", "--", "-.", ":")


def styles(labels, baselines):
    """label -> (colour, dash): baselines black (solid, and each further one a dash of its own: two baseline
    configurations in one comparison stay apart); the others a colour and a dash each, so that two curves that
    coincide (cosine and linear do, early) still both show."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    others = [label for label in labels if label not in baselines]
    out = {label: ("black", DASHES[i % len(DASHES)]) for i, label in enumerate(x for x in labels if x in baselines)}
    out.update({label: (cmap(i % 10), DASHES[(i + i // 10) % len(DASHES)]) for i, label in enumerate(others)})
    return out


def by_dataset(groups, labels):
    """{data set: its labels}, in the order the labels come."""
    out = {}
    for label in labels:
        out.setdefault(groups[label]["dataset"], []).append(label)
    return out


def curves_figure(groups, labels, path, title, style):
    """The four curves of each row: 2 x 2 panels for one data set, a row of four panels per data set for more."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    facets = by_dataset(groups, labels)
    if len(facets) == 1:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
        rows = [(None, labels, list(axes.flat))]
    else:
        fig, axes = plt.subplots(len(facets), 4, figsize=(20, 3.8 * len(facets)), dpi=100, squeeze=False)
        rows = [(ds, names, list(row)) for (ds, names), row in zip(facets.items(), axes)]
    outside = len(labels) > 4 or len(facets) > 1  # a legend beside the panels instead of one covering the curves
    for ds, names, panels in rows:
        for ax, (key, label, log) in zip(panels, CURVES):
            for name in names:
                color, dash = style[name]
                _band(ax, groups[name]["seeds"], key, name, color, log, dash)
                if key == "lr":
                    _rejected(ax, groups[name]["seeds"], color)
            ax.set(title=f"{ds}: {label}" if ds else label, xlabel="epoch", yscale="log" if log else "linear")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(alpha=0.3)
        if ds:  # each data set's rows beside its own panels
            panels[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if len(facets) == 1 and outside:
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    elif len(facets) == 1:  # few rows: inside the first panel
        axes[0, 0].legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds, geometric for the LR; band = min-max)")
    fig.tight_layout()
    fig.savefig(path, **({"bbox_inches": "tight"} if outside else {}))
    plt.close(fig)


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "inconclusive": "tab:gray"}


def _forest_label(r):
    if r.get("dataset") == "pooled":
        return f"{r['arm']} pooled over {r['seeds']} (τ²={r['tau2']:.2g})"
    # a baseline of the row's own data set: the data set is said once, in the row's label
    return r["arm"] + " vs " + re.sub(r" \[dataset=[^\]]*\]$", "", r["baseline"])


def forest(rows, path, margin):
    """Δ with its 95 % CI per row: how a difference of a few points should be read."""
    plt = _plt()
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r["delta_vs_baseline"] is not None]
    # A difference of accuracies lies in [-100, 100] points; an interval beyond that (two seeds far apart give one)
    # is drawn to the axis's edge with an arrow there, and its row says so.
    ends = [x for r in rows for x in (r["delta_vs_baseline"], r["delta_ci_low"], r["delta_ci_high"]) if x is not None]
    lo, hi = max(-100, min(ends + [-margin, 0])), min(100, max(ends + [margin, 0]))
    pad = 0.05 * (hi - lo or 1)
    fig, ax = plt.subplots(figsize=(10, 2.0 + 0.45 * len(rows)), dpi=100)
    ax.set_xlim(lo - pad, hi + pad)
    for i, r in enumerate(rows):
        color = VERDICT_COLORS.get(r["verdict"], "tab:gray")
        clipped = False
        if r["delta_ci_low"] is not None:
            a, b = max(r["delta_ci_low"], -100), min(r["delta_ci_high"], 100)
            ax.plot([a, b], [i, i], color=color, lw=2)
            for end, edge, marker in ((r["delta_ci_low"], a, "<"), (r["delta_ci_high"], b, ">")):
                if end != edge:
                    ax.plot(edge, i, marker, color=color, ms=9)
                    clipped = True
        ax.plot(
            r["delta_vs_baseline"],
            i,
            "D" if r.get("dataset") == "pooled" else "o",
            color=color,
            ms=8 if r.get("dataset") == "pooled" else 6,
        )
        if i and r.get("dataset") != rows[i - 1].get("dataset"):  # between data sets, and before the pooled rows
            ax.axhline(i - 0.5, color="black", lw=0.8, alpha=0.5)
        p = "" if r["p_value"] is None or math.isnan(r["p_value"]) else f"p={r['p_value']:.2g}"
        note = f"n={r['pairs']} {p} {r['verdict']}" + (": n too small, CI beyond ±100" if clipped else "")
        ax.annotate(note, (1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    legend = [Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in VERDICT_COLORS.items()]
    if margin:  # a verdict needs the whole interval beyond one of these lines
        ax.axvspan(-margin, margin, color="gray", alpha=0.12, lw=0)
        for x in (-margin, margin):
            ax.axvline(x, color="black", lw=1, ls="--")
        legend.append(Line2D([], [], color="black", ls="--", label=f"±margin ({margin:g} points)"))
    ax.legend(
        handles=legend, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(legend), frameon=False
    )
    ax.set(
        yticks=range(len(rows)),
        yticklabels=[_forest_label(r) for r in rows],
        xlabel="Δ final test accuracy vs baseline (points), mean and 95 % CI over paired seeds",
    )
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def front(points):
    """The non-dominated points of [(cost, gain)]: none cheaper (or as cheap) gains more; sorted by cost."""
    out, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y))
            best = y
    return out


def _cost_label(r, key):
    return ("≥ " if key == "llm_cost_usd" and r.get("llm_cost_partial") else "") + r["arm"]


def _labels(ax, points):
    """Each point's label beside it, pushed down where it would print over the one above (rows at one cost, say
    all 0 USD, sit on one vertical line). Offsets in points from the point, so that a later tight_layout keeps them."""
    per_px = 72 / ax.figure.dpi
    placed = []  # (x px, y px) of the labels so far
    for x, y, text in sorted(points, key=lambda p: -p[1]):
        px, py = ax.transData.transform((x, y))
        ly = py + 4
        for qx, qy in placed:
            if abs(qx - px) < 60 and ly > qy - 11:
                ly = qy - 11
        placed.append((px, ly))
        ax.annotate(text, (x, y), xytext=(6, (ly - py) * per_px), textcoords="offset points", fontsize=8,
                    arrowprops=dict(arrowstyle="-", color="gray", lw=0.5, shrinkA=0, shrinkB=3))  # fmt: skip


def pareto(rows, path):
    """Δ vs the baseline (mean and 95 % CI) against what a run spent: USD, and seconds in LLM requests. One point
    per row that asks an advisor; the non-dominated front (cheapest for its gain) as a step line. Rows without a
    cost (no price in the models file) are only in the seconds panel, and the cost panel says how many."""
    plt = _plt()
    rows = [r for r in rows if r["delta_vs_baseline"] is not None and r.get("llm_calls")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100)
    for ax, key, xlabel in (
        (axes[0], "llm_cost_usd", "LLM cost per run (USD, from the models file's prices)"),
        (axes[1], "llm_seconds", "LLM seconds per run (in requests)"),
    ):
        shown = [r for r in rows if r[key] is not None]
        for r in shown:
            color = VERDICT_COLORS.get(r["verdict"], "tab:gray")
            low, high = r["delta_ci_low"], r["delta_ci_high"]
            err = None if low is None else [[r["delta_vs_baseline"] - low], [high - r["delta_vs_baseline"]]]
            ax.errorbar(r[key], r["delta_vs_baseline"], yerr=err, fmt="o", color=color, capsize=3, ms=6)
        best = front([(r[key], r["delta_vs_baseline"]) for r in shown])
        if len(best) > 1:  # a front of one point is no line: the point is ringed instead
            xs, ys = zip(*best)
            ax.step(xs, ys, where="post", color="tab:blue", lw=1.5, alpha=0.8, label="non-dominated front")
        if best:
            ax.plot(
                *zip(*best), "o", ms=13, mfc="none", mec="tab:blue", label="non-dominated (none cheaper gains more)"
            )
            ax.legend(fontsize=8, loc="best")
        ax.axhline(0, color="black", lw=1, ls=":")
        top = max((r[key] for r in shown), default=0)
        span = top * 1.15 if top > 0 else 1
        ax.set_xlim(-0.03 * span, span)  # a cost or a time is never negative; a little room to see points at 0
        _labels(ax, [(r[key], r["delta_vs_baseline"], _cost_label(r, key)) for r in shown])
        missing = len(rows) - len(shown)
        what = "USD" if key == "llm_cost_usd" else "seconds"
        if not shown:
            title = f"no row has a price in the models file ({missing} rows ask an LLM): nothing to plot"
            ax.text(0.5, 0.5, "no prices", transform=ax.transAxes, ha="center", color="gray")
        else:
            title = f"{len(shown)} rows asking an advisor: mean Δ and 95 % CI" + (
                f"; {missing} without a price not shown" if missing else ""
            )
            if top == 0:
                title += f"; all spent 0 {what}"
        ax.set(xlabel=xlabel, ylabel="Δ final test accuracy vs baseline (points)", title=title)
        ax.grid(alpha=0.3)
    fig.suptitle("accuracy gained against what the advisor cost")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def heatmap(groups, path):
    """Final per-class test accuracy, rows x classes, one panel per data set (its own classes); the numbers are
    written in only where there are few classes."""
    plt = _plt()
    facets = by_dataset(groups, list(groups))
    wide = max(len(DATASETS[ds]["classes"]) if ds in DATASETS else 10 for ds in facets) > 20
    heights = [1.2 + 0.5 * len(labels) + (1.0 if wide else 0) for labels in facets.values()]
    fig, axes = plt.subplots(
        len(facets),
        1,
        figsize=(22 if wide else 10, sum(heights)),
        dpi=100,
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (ds, labels) in zip(axes[:, 0], facets.items()):
        classes = list(groups[labels[0]]["seeds"][0]["class_acc"])
        grid = [[statistics.mean(s["class_acc"][c] for s in groups[a]["seeds"]) for c in classes] for a in labels]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        few = len(classes) <= 20
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(labels)),
            yticklabels=labels,
            title=f"final per-class test accuracy (%), {ds}",
        )
        ax.set_xticklabels(classes, rotation=0 if few else 90, fontsize=None if few else 6)
        for i, row in enumerate(grid):
            for j, v in enumerate(row if few else []):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def credit(groups, path, style, margin):
    """Every decision's credit (run − branch, accuracy points) against the epoch it was made after, one colour
    per row; the ±margin band is where a decision counts as neutral. Markers are spread a little sideways
    within an epoch so that equal values stay visible."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    labels = [label for label, g in groups.items() if any(s["credits"] for s in g["seeds"])]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for i, label in enumerate(labels):
        pts = [(c["epoch"], c["credit_acc"]) for s in groups[label]["seeds"] for c in s["credits"]]
        shift = 0.25 * ((i + 0.5) / len(labels) - 0.5)
        color, _ = style[label]
        ax.scatter(
            [e + shift for e, _ in pts],
            [v for _, v in pts],
            color=color,
            s=28,
            alpha=0.8,
            label=f"{label} (n={len(pts)})",
        )
    ax.axhline(0, color="black", lw=1)
    if margin:  # the band may be thinner than a line at this scale: its edges are drawn, and the legend shows them
        band = dict(facecolor=(0.5, 0.5, 0.5, 0.3), edgecolor="black", ls="--", lw=0.8)  # opaque edges
        ax.axhspan(-margin, margin, **band, label=f"neutral (±{margin:g} points)")
    epochs = [c["epoch"] for g in groups.values() for s in g["seeds"] for c in s["credits"]]
    if epochs:  # whole epochs, half an epoch of room either side of the sideways spread
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set(
        xlabel="epoch of the decision",
        ylabel="credit: run − branch accuracy (points)",
        title="what each decision was worth against the schedule's LR from the same state",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig
