"""sweep --until-decided: rounds of seeds until every arm's verdict against the baseline is clear.

Round 1 trains seeds 0 .. min_seeds-1 of the baseline and of every arm; each later round adds one seed to the
baseline and to every arm not decided yet, in parallel as any sweep does (and resumable: a finished child is not
trained again). After each round an arm's paired differences from the baseline (final test accuracy, the same seed and
data set) give its anytime-valid confidence sequence (stats.confidence_sequence), valid however many times it is
looked at. With K arms each sequence is at level alpha / K (Bonferroni): the K sequences then cover their means
together whatever their dependence (they share the baseline's runs), so every verdict holds at once; e-BH would
control only the share of false "differs" claims and gives no simultaneous sequences. An arm stops when its sequence
lies inside ±margin (equivalent) or excludes 0 (better / worse), else at max_seeds (inconclusive).

The parent run records each round (metrics round_seeds, arms_open, arms_decided; step = round), every arm's verdict
and when it was reached (tags verdict.<arm>), and every arm's sequence after every round (the table sequential.json).
"""

import re

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.study import stats

SETTINGS = ("until_decided", "min_seeds", "max_seeds", "alpha", "margin")  # the parent's params
TABLE = "sequential.json"


def accuracies(sw):
    """{sweep_key: final test accuracy} of this sweep's finished children."""
    runs = MlflowClient().search_runs(
        [sw.experiment_id],
        f"tags.sweep_id = {tracking.quote(sw.sweep_id)} and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    return {r.data.tags.get("sweep_key"): r.data.metrics["test_acc"] for r in runs if "test_acc" in r.data.metrics}


def judge(cfg, row, base, acc, n, level, job):
    """The sequence of `row` against `base` over seeds 0 .. n-1 (the pairs both finished)."""
    keys = [(job(row, s).key, job(base, s).key) for s in range(n)]
    deltas = [acc[a] - acc[b] for a, b in keys if a in acc and b in acc]
    low, high = stats.confidence_sequence(deltas, level)
    return {
        "arm": row.label,
        "dataset": row.dataset,
        "seeds": len(deltas),
        "delta": sum(deltas) / len(deltas) if deltas else None,
        "cs_low": low,
        "cs_high": high,
        "e_value": stats.e_value(deltas),
        "verdict": stats.anytime_verdict(low, high, cfg.margin),
    }


def rounds(cfg, sw, rows, launcher, job):
    """Train rounds of seeds until every arm is decided (module docstring). `job(row, seed)` is the child that trains
    a row's seed (study/sweep.py). Returns what the launcher returned for the children it trained, and the children
    finished before this sweep started (skipped), as a one-pass sweep does."""
    base = {r.dataset: r for r in rows if r.arm == "baseline"}
    arms = [r for r in rows if r.arm != "baseline"]
    level = cfg.alpha / len(arms)
    results, decided, table, before = {}, {}, [], accuracies(sw)
    skipped = {}
    with tracking.writing():
        tracking.declare_tables([TABLE])
    for number, n in enumerate(range(cfg.min_seeds, cfg.max_seeds + 1), start=1):
        open_rows = [r for r in arms if r not in decided]
        wanted = [
            job(r, s)
            for r in open_rows + [base[d] for d in dict.fromkeys(r.dataset for r in open_rows)]
            for s in range(n)
        ]
        done = accuracies(sw)
        todo = [j for j in wanted if j.key not in done]
        skipped.update((j.key, j) for j in wanted if j.key in before)
        print(
            f"\nsweep {sw.sweep_id}: round {number}, seeds 0..{n - 1}: {len(open_rows)} arm(s) open, "
            f"{len(todo)} run(s) to train",
            flush=True,
        )
        results.update(launcher(todo, sw))
        acc = accuracies(sw)
        for row in open_rows:
            said = {"round": number, **judge(cfg, row, base[row.dataset], acc, n, level, job)}
            table.append(said)
            if said["verdict"] != "inconclusive" or n == cfg.max_seeds:
                decided[row] = said
                print(
                    f"  {row.label} on {row.dataset}: {said['verdict']} after {said['seeds']} seeds "
                    f"(CS [{said['cs_low']:+.2f}, {said['cs_high']:+.2f}], e = {said['e_value']:.3g})",
                    flush=True,
                )
        with tracking.writing():
            mlflow.log_metrics(
                {"round_seeds": n, "arms_open": len(open_rows), "arms_decided": len(decided)}, step=number
            )
            tracking.write_table(table, TABLE)
            mlflow.set_tags(
                {
                    f"verdict.{tag_key(r)}": f"{v['verdict']} at round {v['round']} ({v['seeds']} seeds): CS "
                    f"[{v['cs_low']:.3g}, {v['cs_high']:.3g}], e = {v['e_value']:.3g}"
                    for r, v in decided.items()
                }
            )
        if len(decided) == len(arms):
            break
    full = len(arms) * cfg.max_seeds  # every arm to max_seeds
    used = sum(v["seeds"] for v in decided.values())
    print(
        f"sweep {sw.sweep_id}: every arm decided; {used} arm seeds trained of the {full} that max_seeds "
        f"{cfg.max_seeds} would take",
        flush=True,
    )
    with tracking.writing():
        mlflow.log_metrics({"arm_seeds_used": used, "arm_seeds_at_max": full})
    return results, list(skipped.values())


def tag_key(row):
    """An arm's label as an MLflow tag key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", f"{row.label} {row.dataset}" if row.dataset != "cifar10" else row.label)
