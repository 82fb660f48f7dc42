"""The baseline ladder: every schedule's LR sequence, as trained and logged, equals the torch scheduler stepped
by hand; an advisor's LR scales the rest of the schedule; the null controls and the guard go through the
same path as an LLM."""

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import TWO_STEPS, cli, history, point, runs_of
from fake_gemini import FakeGemini, reply

STEPS = 2


def by_hand(name, epochs, lr=0.1, overrides=None, losses=None):
    """Per-step LRs from a fresh torch scheduler on a dummy optimizer; overrides {epoch: lr} are written into the
    optimizer after that epoch (OneCycleLR's anchors scaled with it, as documented)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    total = epochs * STEPS
    sched = {
        "step": lambda: lr_scheduler.StepLR(opt, 5, 0.1),
        "cosine": lambda: lr_scheduler.CosineAnnealingLR(opt, total),
        "onecycle": lambda: lr_scheduler.OneCycleLR(opt, lr, total_steps=total, cycle_momentum=False),
        "linear": lambda: lr_scheduler.LinearLR(opt, 1.0, 0.0, total),
        "plateau": lambda: lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=2),
        "constant": lambda: lr_scheduler.MultiplicativeLR(opt, lambda _: 1.0),
    }[name]()
    out = []
    for epoch in range(1, epochs + 1):
        for _ in range(STEPS):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if name in ("cosine", "onecycle", "linear"):
                sched.step()
        if name == "plateau":
            sched.step(losses[epoch - 1])
        elif name in ("step", "constant"):
            sched.step()
        if overrides and epoch in overrides:
            g = opt.param_groups[0]
            if name == "onecycle":
                for key in ("initial_lr", "max_lr", "min_lr"):
                    g[key] *= overrides[epoch] / g["lr"]
            g["lr"] = overrides[epoch]
    return out


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle", "linear", "plateau", "constant"])
def test_schedule_lrs_equal_torch_stepped_by_hand(name, tiny_cifar, experiment):
    epochs = 7
    assert (
        cli(
            "train",
            "--schedule",
            name,
            "--data-dir",
            tiny_cifar,
            "--epochs",
            epochs,
            "--lr",
            0.05,
            *TWO_STEPS,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    losses = [v for _, v in history(run.info.run_id, "train_loss")]
    ref = by_hand(name, epochs, lr=0.05, losses=losses)
    assert [v for _, v in history(run.info.run_id, "lr")] == pytest.approx(ref[::STEPS], rel=1e-12)
    assert run.data.params["arm.schedule"] == name
    if name in ("cosine", "onecycle", "linear"):  # per-step schedules log every batch's LR too
        steps = history(run.info.run_id, "lr_step")
        assert [s for s, _ in steps] == list(range(1, epochs * STEPS + 1))
        assert [v for _, v in steps] == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step"])
def test_advisor_lr_scales_the_rest_of_the_schedule(name, tiny_cifar, experiment, monkeypatch):
    with FakeGemini([reply("Let us try a learning rate of 0.02.")]) as g:
        point(monkeypatch, g)
        assert (
            cli(
                "train",
                "--arm",
                "cadence3",
                "--schedule",
                name,
                "--data-dir",
                tiny_cifar,
                "--epochs",
                6,
                *TWO_STEPS,
                "--experiment",
                experiment,
            )
            == 0
        )
    (run,) = runs_of(experiment)
    ref = by_hand(name, 6, overrides={3: 0.02})
    assert [v for _, v in history(run.info.run_id, "lr")] == pytest.approx(ref[::STEPS], rel=1e-9)
    assert history(run.info.run_id, "lr")[3][1] == pytest.approx(0.02)


def test_ladder_and_controls_need_no_key(tiny_cifar, experiment, monkeypatch, capsys):
    from lradvisor.arms import GROUPS

    for var in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for arm in GROUPS["ladder"] + GROUPS["controls"]:  # in-process: a sweep of them is 7 processes' start-up
        assert (
            cli("train", "--arm", arm, "--data-dir", tiny_cifar, "--epochs", 3, *TWO_STEPS, "--experiment", experiment)
            == 0
        )
    arms = {r.data.tags["arm"]: r for r in runs_of(experiment)}
    assert set(arms) == {"baseline", "cosine", "onecycle", "linear", "plateau", "random_control", "textbook_control"}
    import mlflow

    client = mlflow.MlflowClient()
    for arm, model in (("random_control", "random"), ("textbook_control", "textbook")):
        run = arms[arm]
        rows = client.load_table(run.info.experiment_id, "advisor/calls.json", run_ids=[run.info.run_id]).to_dict(
            "records"
        )
        assert [r["model"] for r in rows] == [model, model] and all(
            r["reply"].startswith("Suggested LR: ") for r in rows
        )
        lrs = [v for _, v in history(run.info.run_id, "lr")]
        assert lrs[1:] == pytest.approx([r["applied_lr"] for r in rows])  # the reply went through the parser
    random_rows = client.load_table(
        arms["random_control"].info.experiment_id, "advisor/calls.json", run_ids=[arms["random_control"].info.run_id]
    ).to_dict("records")
    for r in random_rows:  # s * 10^u, u in [-1, 1]
        assert r["scheduler_lr"] / 10 <= r["parsed_lr"] <= r["scheduler_lr"] * 10


def test_textbook_rule_and_random_seeding(tiny_cifar, experiment):
    for seed in (0, 0, 1):
        assert (
            cli(
                "train",
                "--arm",
                "random_control",
                "--seed",
                seed,
                "--data-dir",
                tiny_cifar,
                "--epochs",
                3,
                *TWO_STEPS,
                "--experiment",
                experiment,
            )
            == 0
        )
    a, b, c = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    lr = lambda r: [v for _, v in history(r.info.run_id, "lr")]  # noqa: E731
    assert lr(a) == lr(b) and lr(a) != lr(c)  # seeded by the run's seed


def test_guard_rolls_back_a_diverging_proposal(tiny_cifar, experiment, monkeypatch):
    with FakeGemini([reply("The learning rate should be 0.9.")]) as g:
        point(monkeypatch, g)
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--guard",
                "rollback",
                "--guard-factor",
                1.01,
                "--lr",
                0.01,
                "--momentum",
                0.99,
                "--data-dir",
                tiny_cifar,
                "--epochs",
                3,
                *TWO_STEPS,
                "--experiment",
                experiment,
            )
            == 0
        )
    (run,) = runs_of(experiment)
    rollbacks = history(run.info.run_id, "advisor_rollback")
    assert rollbacks, "the 0.9 proposal should have blown the loss past 1.01 x the previous epoch"
    import mlflow

    rows = (
        mlflow.MlflowClient()
        .load_table(run.info.experiment_id, "advisor/calls.json", run_ids=[run.info.run_id])
        .to_dict("records")
    )
    notes = [r for r in rows if r["model"] == "guard"]
    assert len(notes) == len(rollbacks) and notes[0]["reason"].startswith("rolled back: epoch")
    lrs = dict(history(run.info.run_id, "lr"))
    for step, _ in rollbacks:  # the epoch as kept trained at the scheduler's LR, not the advisor's
        assert lrs[step] == pytest.approx(0.01)


def test_overlay_lr_panel_is_geometric_and_marks_rejected_proposals():
    """On a log axis the middle of 0.1 and 0.001 is 0.01: the LR curve averages seeds geometrically, and
    proposals the rule turned down are marked at the epoch they were meant for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lradvisor.study import figures

    seeds = [
        {
            "curves": {
                "lr": [0.1, 0.1],
                "advisor_proposed_lr": [5.0],
                "advisor_proposed_lr_steps": [1],
                "advisor_accepted": [0.0],
                "advisor_accepted_steps": [1],
            }
        },
        {
            "curves": {
                "lr": [0.1, 0.001],
                "advisor_proposed_lr": [0.001],
                "advisor_proposed_lr_steps": [1],
                "advisor_accepted": [1.0],
                "advisor_accepted_steps": [1],
            }
        },
    ]
    fig, ax = plt.subplots()
    figures._band(ax, seeds, "lr", "arm", "red", log=True)
    figures._rejected(ax, seeds, "red")
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.1, 0.01])
    (marks,) = ax.collections[1:]  # after the min-max band
    assert marks.get_offsets().tolist() == [[2.0, 5.0]]  # only the rejected one, at epoch 1 + 1
    plt.close(fig)


def test_forest_draws_the_margin_and_colours_verdicts_and_many_rows_stay_apart(tmp_path):
    from lradvisor.study import figures

    rows = [
        {
            "arm": a,
            "baseline": "baseline",
            "delta_vs_baseline": d,
            "delta_ci_low": d - 1,
            "delta_ci_high": d + 1,
            "p_value": 0.01,
            "pairs": 3,
            "verdict": v,
        }
        for a, d, v in (("cosine", 3.0, "better"), ("linear", -3.0, "worse"), ("plateau", 0.2, "inconclusive"))
    ]
    fig = figures.forest(rows, tmp_path / "forest.png", margin=0.5)
    (ax,) = fig.axes
    dashed = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--")
    assert dashed == [-0.5, 0.5]
    colors = [line.get_color() for line in ax.lines if line.get_marker() == "o"]
    assert colors == ["tab:green", "tab:red", "tab:gray"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "better",
        "worse",
        "inconclusive",
        "±margin (0.5 points)",
    ]
    # overview: every row its own colour and dash (cosine and linear coincide early; both must show)
    labels = ["baseline", "cosine", "onecycle", "linear", "plateau", "random_control", "textbook_control"] + [
        f"x{i}" for i in range(10)
    ]
    style = figures.styles(labels, {"baseline"})
    assert style["baseline"] == ("black", "-")
    others = [style[label] for label in labels[1:]]
    assert len(set(others)) == len(others) and style["cosine"][1] != style["linear"][1]
