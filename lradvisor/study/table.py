"""The results table: per row (arm and configuration) its final accuracy, its Δ against its own baseline with
paired statistics (stats.py), its budget and its credit; a pooled row per arm measured on several data sets; and
the same as Markdown with the notes that say how to read it."""

import math
import re
import statistics

from lradvisor.study import stats

BUDGET = (
    "llm_calls",
    "llm_failed_calls",
    "llm_tokens",
    "llm_cost_usd",
    "llm_seconds",
    "llm_retry_seconds",
    "train_seconds",
    "credit_seconds",
    "advisor_changes",
    "search_epochs",
    "oracle_seconds",
)


def saw_test(g):
    """A row's decisions_saw_test: 1, 0, mixed, or ? (runs recorded before lradvisor tagged it)."""
    seen = {s["saw_test"] for s in g["seeds"]}
    return seen.pop() if len(seen) == 1 else "mixed"


def table(groups, pairs, margin, credit_margin, alpha=0.05):
    rows = []
    for label, g in groups.items():
        finals = {s["seed"]: s["curves"]["test_acc"][-1] for s in g["seeds"]}
        base_label = pairs.get(label)
        base = {s["seed"]: s["curves"]["test_acc"][-1] for s in groups[base_label]["seeds"]} if base_label else {}
        vals = list(finals.values())
        row = {
            "arm": label,
            "dataset": g["dataset"],
            "seeds": ",".join(finals),
            "runs": len(finals),
            "epochs": ",".join(sorted({str(len(s["curves"]["test_acc"])) for s in g["seeds"]})),
            "final_test_acc_mean": statistics.mean(vals),
            "final_test_acc_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "decisions_saw_test": saw_test(g),
            "baseline": base_label or "",
            "pairs": 0,
            "unpaired_seeds": "",
            "delta_vs_baseline": None,
            "delta_se": None,
            "delta_ci_low": None,
            "delta_ci_high": None,
            "p_value": None,
            "verdict": "",
            "cs_low": None,
            "cs_high": None,
            "e_value": None,
            "anytime_verdict": "",
            "tau2": None,
        }
        if base_label and base_label != label:
            paired = [s for s in finals if s in base]
            row["unpaired_seeds"] = ",".join(
                [f"{s} (no {base_label})" for s in finals if s not in base]
                + [f"{s} (only {base_label})" for s in base if s not in finals]
            )
            test = stats.paired([finals[s] for s in paired], [base[s] for s in paired], margin)
            row.update(pairs=len(paired), **test)
            deltas = [finals[s] - base[s] for s in paired]  # valid however the seeds were chosen (stats.py)
            low, high = stats.confidence_sequence(deltas, alpha)
            row.update(
                cs_low=low,
                cs_high=high,
                e_value=stats.e_value(deltas),
                anytime_verdict=stats.anytime_verdict(low, high, margin),
            )
        for key in BUDGET:
            got = [s["budget"][key] for s in g["seeds"] if s["budget"][key] is not None]
            row[key] = statistics.mean(got) if got else None
        # A cost is only a cost when every run has one (a model with no price has none, never 0); partial: some
        # exchange of a run said no token counts (in flight at the end, or no reply), and is not in its sum.
        if any(s["budget"]["llm_cost_usd"] is None for s in g["seeds"]):
            row["llm_cost_usd"] = None
        row["llm_cost_partial"] = any(s["cost_partial"] for s in g["seeds"])
        row["accepted"] = statistics.mean(sum(s["curves"]["advisor_accepted"]) for s in g["seeds"])
        row["changes"] = row.pop("advisor_changes")  # next to accepted: how many accepted answers moved the LR
        row["lowest_lr"] = min(min(s["curves"]["lr"]) for s in g["seeds"])
        # Credit: every decision of the row's runs that moved the LR, against its branch (accuracy points).
        credits = [c["credit_acc"] for s in g["seeds"] for c in s["credits"]]
        mean, low, high = stats.mean_ci(credits)
        row.update(
            n_decisions=len(credits),
            credit_mean=mean,
            credit_ci_low=low,
            credit_ci_high=high,
            helped=sum(c > credit_margin for c in credits),
            hurt=sum(c < -credit_margin for c in credits),
            neutral=sum(abs(c) <= credit_margin for c in credits),
        )
        rows.append(row)
    return rows + pooled_rows(groups, rows, margin)


def pooled_rows(groups, rows, margin):
    """Per arm (and configuration apart from the data set) measured on two or more data sets: one row whose Δ
    pools the per-data-set Δs by random effects. Data sets where Δ has no spread (fewer than 2 pairs, or
    every pair the same) cannot be weighed and are left out; it says which are in the row's `seeds`."""
    if len({g["dataset"] for g in groups.values()}) < 2:
        return []
    by_config = {}
    for row, g in zip(rows, groups.values()):
        by_config.setdefault(g["pool_key"], []).append(row)
    out = []
    for members in by_config.values():
        usable = [r for r in members if r["delta_se"]]
        if len(usable) < 2:
            continue
        label = re.sub(r"\s*\[\]$", "", re.sub(r"dataset=[^,\]]*(, )?", "", members[0]["arm"]).replace(", ]", "]"))
        row = {k: None for k in members[0]}
        row.update(
            arm=label,
            dataset="pooled",
            seeds=" + ".join(r["dataset"] for r in usable),
            runs=sum(r["runs"] for r in usable),
            pairs=sum(r["pairs"] for r in usable),
            epochs=",".join(sorted({e for r in usable for e in r["epochs"].split(",")})),
            decisions_saw_test=(
                {r["decisions_saw_test"] for r in usable}.pop()
                if len({r["decisions_saw_test"] for r in usable}) == 1
                else "mixed"
            ),
            baseline=" + ".join(r["baseline"] for r in usable),
            unpaired_seeds="",
            n_decisions=0,
            **stats.pooled([r["delta_vs_baseline"] for r in usable], [r["delta_se"] for r in usable], margin),
        )
        out.append(row)
    return out


def _f(x, fmt):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


SAW_TEST = " †"  # marks a row whose decisions read test-set numbers


HEADER = [
    "| arm | seeds | final test acc (%) | Δ vs baseline (points) | 95 % CI | p | verdict | anytime CS | e | "
    "anytime verdict | LLM calls | failed | accepted | changes | LLM tokens | LLM cost $ | LLM s | retry waits s | "
    "train s | search epochs | lowest LR |",
    "|" + "---|" * 21,
]


def _line(r, paired=False):
    """A row of the table; `paired`: the table has several baselines, so each row says which one its Δ is against."""
    acc = f"{r['final_test_acc_mean']:.2f}" + (f" ± {r['final_test_acc_std']:.2f}" if r["runs"] > 1 else "")
    ci = "—" if r["delta_ci_low"] is None else f"[{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]"
    arm = r["arm"] + (SAW_TEST if r["decisions_saw_test"] in ("1", "mixed") else "")
    if paired and r["baseline"] and r["delta_vs_baseline"] is not None:
        arm += f" (vs {r['baseline']})"
    cs = "—" if r["cs_low"] is None else f"[{r['cs_low']:+.2f}, {r['cs_high']:+.2f}]".replace("inf", "∞")
    return (
        f"| {arm} | {r['seeds']} | {acc} | {_f(r['delta_vs_baseline'], '+.2f')} | {ci} | "
        f"{_f(r['p_value'], '.3g')} | {r['verdict'] or '—'} | {cs} | {_f(r['e_value'], '.3g')} | "
        f"{r['anytime_verdict'] or '—'} | {_f(r['llm_calls'], 'g')} | {_f(r['llm_failed_calls'], 'g')} | "
        f"{_f(r['accepted'], 'g')} | {_f(r['changes'], 'g')} | {_f(r['llm_tokens'], '.0f')} | "
        f"{'≥ ' if r['llm_cost_partial'] and r['llm_cost_usd'] is not None else ''}{_f(r['llm_cost_usd'], '.3g')} | "
        f"{_f(r['llm_seconds'], '.1f')} | {_f(r['llm_retry_seconds'], '.1f')} | {_f(r['train_seconds'], '.1f')} | "
        f"{_f(r['search_epochs'], '.0f')} | {r['lowest_lr']:.3g} |"
    )


def markdown(rows, margin, credit_margin=0.1, alpha=0.05):
    """The results table; with several data sets one table per data set, then the pooled rows."""
    tasks = [r for r in rows if r["dataset"] != "pooled"]
    datasets = list(dict.fromkeys(r["dataset"] for r in tasks))
    lines = []
    for ds in datasets:
        if len(datasets) > 1:
            lines += [f"### data set: {ds}", ""]
        mine = [r for r in tasks if r["dataset"] == ds]
        paired = len({r["baseline"] for r in mine if r["baseline"]}) > 1
        lines += HEADER + [_line(r, paired) for r in mine] + ([""] if len(datasets) > 1 else [])
    pooled = [r for r in rows if r["dataset"] == "pooled"]
    if pooled:
        lines += [
            "### pooled over data sets (random effects)",
            "",
            "| arm | data sets | pairs | Δ vs baseline (points) | 95 % CI | p | verdict | τ² |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in pooled:
            lines.append(
                f"| {r['arm']}{SAW_TEST if r['decisions_saw_test'] in ('1', 'mixed') else ''} | {r['seeds']} | "
                f"{r['pairs']} | {r['delta_vs_baseline']:+.2f} | [{r['delta_ci_low']:+.2f}, "
                f"{r['delta_ci_high']:+.2f}] | {r['p_value']:.3g} | {r['verdict']} | {r['tau2']:.3g} |"
            )
    if lines[-1] == "":
        lines.pop()
    credited = [r for r in rows if r["n_decisions"]]
    if credited:
        lines += [
            "",
            "| arm | decisions | credit (points) | 95 % CI | helped | hurt | neutral | credit s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in credited:
            ci = "—" if r["credit_ci_low"] is None else f"[{r['credit_ci_low']:+.2f}, {r['credit_ci_high']:+.2f}]"
            lines.append(
                f"| {r['arm']} | {r['n_decisions']} | {r['credit_mean']:+.2f} | {ci} | {r['helped']} | "
                f"{r['hurt']} | {r['neutral']} | {_f(r['credit_seconds'], '.1f')} |"
            )
    notes = [
        f"Δ: mean over seeds of (arm − its baseline) in final test accuracy, paired by seed; CI: t "
        f"distribution, n−1 df; p: two-sided paired t-test; verdict: CI entirely above +{margin:g} / below "
        f"−{margin:g} points → better / worse, else inconclusive: read it when the number of seeds was fixed "
        f"before any result was seen. Anytime CS: the {100 * (1 - alpha):g} % confidence sequence (Wang & Ramdas "
        f"2024), valid however many seeds were added after looking (sweep --until-decided), per row (not "
        f"corrected for the number of rows); wider than the CI, and the whole line under 3 pairs; e: the evidence "
        f"against Δ = 0 (≥ {1 / alpha:g} rejects it); anytime verdict: the sequence within ±margin → equivalent"
        f" (margin > 0), above / below 0 → better / worse, else inconclusive."
    ]
    if any(r.get("llm_calls") for r in rows):
        notes.append(
            "LLM cost $: mean per run, from each exchange's token counts and the prices in the models file "
            "(--models); empty where the model has no price; ≥: some exchange said no token counts (no reply, "
            "or still in flight when training ended) and is not in it. LLM s: seconds in requests, retry waits "
            "apart; under advice async training does not wait for them."
        )
    if any(r.get("search_epochs") for r in rows):
        notes.append(
            "Search epochs: the epochs a search's trials (or PBT members) trained to find the row's schedule, "
            "selected on a validation split; the row's own runs, on the seeds the other rows use, are not in it."
        )
    if credited:
        notes.append(
            f"Credit: per decision that moved the LR, run − branch in accuracy (points) on the decision "
            f"split, the branch trained from the same state and data order at the scheduler's LR; mean and "
            f"95 % CI (t) over all decisions of the row's runs; helped / hurt: above +{credit_margin:g} / "
            f"below −{credit_margin:g} points, else neutral."
        )
    if pooled:
        notes.append(
            "Pooled: each data set's Δ weighed by 1/(SE² + τ²), τ² the variance between data sets "
            "(DerSimonian–Laird); 95 % CI and p by Hartung–Knapp (t with k−1 df, k data sets): wide for few "
            "data sets, by design; data sets whose Δ has no spread (under 2 pairs, or all pairs equal) cannot "
            "be weighed and are left out."
        )
    if any(r["decisions_saw_test"] in ("1", "mixed") for r in rows):
        notes.append(
            f"{SAW_TEST.strip()} decisions read test-set numbers (per-class test accuracy in the prompt, "
            "holdout 0): its test accuracy is not a held-out score."
        )
    unpaired = [f"{r['arm']}: {r['unpaired_seeds']}" for r in rows if r["unpaired_seeds"]]
    if unpaired:
        notes.append("Unpaired seeds (not in Δ): " + "; ".join(unpaired) + ".")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
