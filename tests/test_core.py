"""The pure core in milliseconds: the reply parsers and the accept rule, the statistics, the settings and a sweep's
identity of a child, the cost of an exchange, compare's grouping and table, and the schedules against torch's own."""

import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lradvisor.cli import parse
from lradvisor.config import SweepConfig, TrainConfig, to_flags
from lradvisor.llm import prompt, zoo
from lradvisor.study import compare, stats, table
from lradvisor.study.sweep import shared_flags, sweep_key

LR = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False, exclude_min=False)


# ---- replies and the rule


@given(st.text())
def test_the_parsers_never_raise_on_any_text(text):
    for parse_reply in prompt.PARSERS.values():
        value, why = parse_reply(text)
        assert (value is None) == bool(why) and (value is None or math.isfinite(value) or math.isinf(value))


@given(st.one_of(st.none(), st.floats(allow_nan=False)), LR, st.sampled_from([0.0, 1.0, 2.0, 10.0]))
def test_the_rule_never_applies_an_lr_outside_its_bounds(proposed, scheduler_lr, max_factor):
    applied, accepted, reason = prompt.decide(proposed, scheduler_lr, max_factor)
    if not accepted:
        assert applied == scheduler_lr and reason
    else:
        assert 0 < applied < 1 or (max_factor and applied <= scheduler_lr * max_factor)
        if max_factor:
            assert scheduler_lr / max_factor * (1 - 1e-12) <= applied <= scheduler_lr * max_factor * (1 + 1e-12)


@pytest.mark.parametrize(
    "reply, lr",
    [
        ("A recommended new learning rate would be **0.01**.", 0.01),
        ("LR: 5E-04", 5e-4),
        ("reduce by factor of 10", None),
        ("The learning_rate should be .02", 0.02),
        ("no number", None),
    ],
)
def test_the_published_regex(reply, lr):
    assert prompt.parse_regex(reply)[0] == lr


# ---- statistics


def test_paired_is_the_t_interval():
    arm, base = [91.0, 93.5, 92.0, 94.0], [90.0, 91.0, 91.5, 92.0]
    d = [a - b for a, b in zip(arm, base)]
    half = 3.182446305284263 * statistics.stdev(d) / 2  # t(0.975, 3) s / sqrt(4)
    out = stats.paired(arm, base)
    assert out["delta_ci_low"] == pytest.approx(statistics.mean(d) - half)
    assert out["delta_ci_high"] == pytest.approx(statistics.mean(d) + half) and out["verdict"] == "better"


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=6), st.floats(0.1, 3))
def test_the_pooled_interval_is_the_fixed_effect_one_when_tasks_agree(deltas, se):
    """Every task's Δ the same (τ² = 0): the pooled Δ is it, weighted as fixed effects, SE = se / √k."""
    delta = deltas[0]
    out = stats.pooled([delta] * len(deltas), [se] * len(deltas))
    assert out["tau2"] == 0 and out["delta_vs_baseline"] == pytest.approx(delta)
    assert out["delta_se"] == pytest.approx(se / math.sqrt(len(deltas)))


@settings(max_examples=50)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=3, max_size=20))
def test_a_confidence_sequence_is_wider_than_the_fixed_interval_and_shrinks_with_alpha(d):
    low, high = stats.confidence_sequence(d, 0.05)
    if statistics.pstdev(d) > 1e-9 and math.isfinite(low):
        _, ci_low, ci_high = stats.mean_ci(d)
        assert low <= ci_low + 1e-9 and high >= ci_high - 1e-9
        wide_low, wide_high = stats.confidence_sequence(d, 0.01)
        assert wide_low <= low and wide_high >= high


# ---- settings, flags, a sweep's children


def test_a_childs_flags_give_back_its_config():
    cfg = TrainConfig(arm="losses", lr=0.02, batch_size=16, dataset="digits", signals="losses,feedback")
    command, back = parse(["train", *map(str, to_flags(cfg))])
    assert command == "train" and back == cfg


def test_a_sweeps_children_keep_the_identity_they_had():
    """A resumed sweep skips the children whose sweep_key it finds: the key of a default sweep's baseline may never
    change (it is the key of every sweep started before)."""
    flags = shared_flags(SweepConfig())
    assert flags[:6] == ["--epochs", "20", "--batch-size", "128", "--lr", "0.1"]
    assert sweep_key("baseline", "cifar10", 0, flags) == "8acb3cf08041bd31"  # as the code of 2026-11-26 computed it
    assert sweep_key("baseline", "digits", 0, flags) != sweep_key("baseline", "cifar10", 0, flags)
    narrow = shared_flags(SweepConfig(train=TrainConfig(width=16)))
    assert sweep_key("baseline", "cifar10", 0, narrow) != sweep_key("baseline", "cifar10", 0, flags)


def test_the_cost_of_an_exchange():
    entry = {"price_input": 1.0, "price_output": 4.0, "price_thinking": None}
    assert zoo.cost_usd(entry, {"prompt_tokens": 1000, "output_tokens": 500, "thought_tokens": 100}) == pytest.approx(
        (1000 * 1 + 500 * 4 + 100 * 4) / 1e6
    )
    assert zoo.cost_usd(entry, {"prompt_tokens": None, "output_tokens": 3}) is None  # unknown, never 0
    assert zoo.cost_usd(None, {"prompt_tokens": 1, "output_tokens": 1}) is None  # no price


# ---- compare


def fake_run(arm, seed, **params):
    return SimpleNamespace(
        data=SimpleNamespace(
            tags={"arm": arm}, params={"seed": str(seed), "dataset": "digits", "lr": "0.02", **params}
        ),
        info=SimpleNamespace(start_time=seed),
    )


def test_compare_groups_by_configuration_and_pairs_with_the_closest_baseline():
    runs = (
        [fake_run("baseline", s) for s in (0, 1)]
        + [fake_run("baseline", s, lr="0.1") for s in (0, 1)]
        + [fake_run("cosine", s, lr="0.1") for s in (0, 1)]
    )
    groups = compare.group(runs)
    assert list(groups) == ["baseline [lr=0.02]", "baseline [lr=0.1]", "cosine"]
    pairs, notes = compare.pick_baselines(groups, "baseline")
    assert pairs["cosine"] == "baseline [lr=0.1]" and not notes


def test_the_table_is_the_paired_statistics_of_the_finals():
    def seeds(finals):
        return [
            {
                "seed": str(i),
                "curves": {"test_acc": [50.0, f], "lr": [0.1, 0.01], "advisor_accepted": []},
                "budget": {k: None for k in table.BUDGET},
                "cost_partial": False,
                "saw_test": "0",
                "credits": [],
            }
            for i, f in enumerate(finals)
        ]

    groups = {
        "baseline": {"arm": "baseline", "dataset": "digits", "seeds": seeds([90, 92, 91])},
        "cosine": {"arm": "cosine", "dataset": "digits", "seeds": seeds([91, 94, 93])},
    }
    rows = table.table(groups, {"baseline": "baseline", "cosine": "baseline"}, 0.0, 0.1)
    cosine = rows[1]
    assert cosine["delta_vs_baseline"] == pytest.approx(5 / 3) and cosine["pairs"] == 3
    low, high = stats.confidence_sequence([1, 2, 2], 0.05)
    assert (cosine["cs_low"], cosine["cs_high"]) == (pytest.approx(low), pytest.approx(high))
    assert "| cosine | 0,1,2 |" in table.markdown(rows, 0.0)  # one baseline: nothing to say
    # two baseline configurations: each row says which one its Δ is against
    groups["baseline [step_size=1]"] = {"arm": "baseline", "dataset": "digits", "seeds": seeds([80, 81, 82])}
    groups["linear"] = {"arm": "linear", "dataset": "digits", "seeds": seeds([83, 84, 85])}
    pairs = {"baseline": "baseline", "cosine": "baseline", "baseline [step_size=1]": "baseline [step_size=1]"}
    text = table.markdown(table.table(groups, {**pairs, "linear": "baseline [step_size=1]"}, 0.0, 0.1), 0.0)
    assert "| cosine (vs baseline) |" in text and "| linear (vs baseline [step_size=1]) |" in text


# ---- schedules


@pytest.mark.parametrize("name", ["step", "cosine", "linear", "onecycle"])
def test_an_advised_lr_scales_the_rest_of_the_schedule(name):
    from lradvisor.engine import schedules

    cfg, steps = TrainConfig(epochs=4), 3

    def lrs(advise):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        sched = schedules.build(name, opt, cfg, steps)
        out = []
        for epoch in range(1, 5):
            for _ in range(steps):
                out.append(opt.param_groups[0]["lr"])
                opt.step()
                if name in schedules.PER_STEP:
                    sched.step()
            schedules.after_epoch(name, sched, 1.0)
            if advise and epoch == 1:
                schedules.override(sched, opt, 0.5 * opt.param_groups[0]["lr"])
        return out

    plain, advised = lrs(False), lrs(True)
    assert advised[:steps] == plain[:steps]
    assert advised[steps:] == pytest.approx([0.5 * x for x in plain[steps:]], rel=1e-9, abs=1e-12)


# ---- figures: what they draw, read back from the figure ---------------------------------------------------------


def test_forest_keeps_to_what_an_accuracy_difference_can_be_and_says_when_it_clips(tmp_path):
    from lradvisor.study import figures

    def row(arm, delta, low, high, pairs, verdict="inconclusive"):
        return dict(arm=arm, baseline="baseline", delta_vs_baseline=delta, delta_ci_low=low, delta_ci_high=high,
                    pairs=pairs, p_value=0.5, verdict=verdict, dataset="digits")  # fmt: skip

    rows = [row("random_control", 20.0, -300.0, 340.0, 2), row("cosine", 0.5, -0.2, 1.2, 3)]
    fig = figures.forest(rows, tmp_path / "forest.png", margin=1)
    (ax,) = fig.axes
    lo, hi = ax.get_xlim()
    assert -111 < lo < -100 and 100 < hi < 111  # not -300 .. 340
    notes = [t.get_text() for t in ax.texts]
    assert notes[0].endswith("n too small, CI beyond ±100") and "too small" not in notes[1]
    arrows = [line for line in ax.lines if line.get_marker() in ("<", ">")]
    assert sorted((line.get_marker(), line.get_xdata()[0]) for line in arrows) == [("<", -100.0), (">", 100.0)]
    small = figures.forest([rows[1]], tmp_path / "forest2.png", margin=1)
    assert small.axes[0].get_xlim()[1] < 2  # a small difference keeps a small axis


def test_credit_has_whole_epochs_and_a_band_that_shows(tmp_path):
    from lradvisor.study import figures

    seeds = [{"credits": [{"epoch": 1, "credit_acc": 5.0}, {"epoch": 1, "credit_acc": -40.0}]}]
    groups = {"random_control": {"seeds": seeds}}
    fig = figures.credit(groups, tmp_path / "credit.png", {"random_control": ("tab:blue", "-")}, margin=0.1)
    (ax,) = fig.axes
    assert ax.get_xlim() == (0.5, 1.5)
    assert all(t == int(t) for t in ax.get_xticks() if 0.5 <= t <= 1.5)
    (band,) = ax.patches  # its edges drawn opaque: visible however thin the band is at the axis's scale
    assert band.get_edgecolor() == (0, 0, 0, 1) and band.get_linestyle() == "--" and band.get_facecolor()[3] == 0.3
    (shown,) = [h for h in ax.get_legend().legend_handles if "neutral (±0.1 points)" in h.get_label()]
    assert shown.get_edgecolor() == (0, 0, 0, 1)


def test_two_baselines_in_one_comparison_are_drawn_apart():
    from lradvisor.study import figures

    style = figures.styles(["baseline", "baseline [step_size=1]", "cosine"], {"baseline", "baseline [step_size=1]"})
    assert style["baseline"][0] == style["baseline [step_size=1]"][0] == "black"
    assert style["baseline"][1] != style["baseline [step_size=1]"][1]


def test_pareto_says_what_it_plots_when_every_cost_is_zero_or_unknown(tmp_path):
    from lradvisor.study import figures

    def row(arm, delta, usd, seconds):
        return dict(arm=arm, delta_vs_baseline=delta, delta_ci_low=delta - 3, delta_ci_high=delta + 3,
                    verdict="inconclusive", llm_calls=4, llm_cost_usd=usd, llm_seconds=seconds)  # fmt: skip

    rows = [row("random_control", -3.0, 0.0, 0.0), row("textbook_control", -1.7, 0.0, 0.0), row("losses", -2, 0.0, 0.0)]
    fig = figures.pareto(rows, tmp_path / "pareto.png")
    usd = fig.axes[0]
    assert -0.1 < usd.get_xlim()[0] < 0 and usd.get_xlim()[1] == 1  # no cost axis from -0.04 to +0.04
    assert usd.get_title() == "3 rows asking an advisor: mean Δ and 95 % CI; all spent 0 USD"
    assert [t.get_text() for t in usd.get_legend().get_texts()] == ["non-dominated (none cheaper gains more)"]
    fig.canvas.draw()  # labels of rows at one cost do not print over each other
    boxes = [t.get_window_extent() for t in usd.texts]
    assert len(boxes) == 3 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    unpriced = figures.pareto([row("losses [a]", -3.0, None, 3.0)], tmp_path / "pareto2.png")
    assert unpriced.axes[0].get_title().startswith("no row has a price in the models file")


# ---- dependencies


def test_every_package_imported_is_declared_and_conda_yaml_lists_the_same():
    """What lradvisor/ and scripts/ import is the standard library, ours, or declared in pyproject.toml (the base
    or an extra); conda.yaml's pip list (what `mlflow run` builds) is the base list."""
    import ast
    import pathlib
    import re
    import sys
    import tomllib

    import yaml

    root = pathlib.Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {re.split(r"[<>=\[; ]", r)[0].lower() for r in reqs}  # noqa: E731
    base = names(project["dependencies"])
    declared = base | {n for reqs in project["optional-dependencies"].values() for n in names(reqs)}
    # import name -> distribution
    dist = {"google": "google-genai", "sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow"}
    ours = {"lradvisor"} | {p.stem for p in (root / "tests").glob("*.py")}  # scripts may start the stand-ins
    imported = {}
    for path in [*(root / "lradvisor").rglob("*.py"), *(root / "scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top not in ours:
                    imported.setdefault(dist.get(top, top), set()).add(path.relative_to(root).as_posix())
    assert {"torch", "mlflow", "pyyaml"} <= set(imported)  # the walk saw the package
    assert {d: sorted(f) for d, f in imported.items() if d not in declared} == {}
    conda = yaml.safe_load((root / "conda.yaml").read_text())["dependencies"]
    (pip,) = [d["pip"] for d in conda if isinstance(d, dict)]
    assert sorted(pip) == sorted(project["dependencies"])
