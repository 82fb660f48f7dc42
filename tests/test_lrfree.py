"""The optimizers a user would pick instead of tuning a schedule (schedule-free SGD, Prodigy, D-Adaptation SGD) as
arms: they learn on digits, log the step size they chose as `lr`, refuse anything that would steer them, and
schedule-free is evaluated (and its weights recorded) at its averaged weights."""

import pytest
import torch

from lradvisor.arms import resolve
from lradvisor.config import TrainConfig
from lradvisor.engine.loop import evaluate, train_and_evaluate
from lradvisor.engine.optimizers import ScheduleFreeModes
from lradvisor.engine.setup import prepare

from conftest import cli, history, mlflow_run, runs_of

# Width 16: ResNet-18 at a quarter of its channels trains digits ~8x faster here, and learns them as well (below).
DIGITS = ["--dataset", "digits", "--lr", 0.02, "--batch-size", 16, "--width", 16]


@pytest.mark.parametrize(
    "arm, epochs, subset, floor",
    # Floors well above chance (10 %) and below what any CPU gave: bf16 rounds differently on AMD's AVX512-BF16 and on
    # Intel's AMX, and a few epochs on digits move with it (at width 64, schedulefree: 92.8 % on the first, 72.7 % on
    # the second, 2026-12-02). At width 16 on Intel's AMX, 2026-12-03:
    [
        ("schedulefree", 2, 0.5, 50),  # 86.6 %
        ("prodigy", 2, 1.0, 50),  # 96.9 %: its d grows from 1e-6 over the first ~100 steps (75.8 % after one epoch)
        ("dadapt_sgd", 8, 1.0, 50),  # 79.1 %: D-Adaptation's d needs ~300 steps to grow; 17.6 % after 4, 60.5 % after 6
    ],
)
def test_each_learns_on_digits_and_logs_the_step_size_it_chose(arm, epochs, subset, floor, experiment):
    assert (
        cli("train", "--arm", arm, *DIGITS, "--subset-ratio", subset, "--epochs", epochs, "--experiment", experiment)
        == 0
    )
    (run,) = runs_of(experiment)
    final = history(run.info.run_id, "test_acc")[-1][1]
    assert final > floor, f"{arm}: {final:.1f} % after {epochs} epochs (chance: 10 %)"
    params = run.data.params
    assert params["arm.optimizer"] == arm and params["arm.every"] == "0" and "optimizer.lr" in params
    assert params["width"] == "16"
    lr, steps = history(run.info.run_id, "lr"), history(run.info.run_id, "lr_step")
    assert [v for _, v in lr] == [v for s, v in steps if (s - 1) % (len(steps) // epochs) == 0]  # each epoch's first
    assert len({v for _, v in steps}) > 1  # it chose: not the nominal lr throughout


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--advisor", "random"], "takes no advisor"),
        (["--every", "1", "--signals", "losses"], "takes no signals"),
        (["--schedule", "cosine"], "takes no schedule"),
        (["--guard", "rollback"], "takes no guard"),
        (["--credit-epochs", "1"], "takes no credit_epochs"),
    ],
)
def test_nothing_can_steer_them(flags, says, experiment, capsys):
    assert cli("train", "--arm", "prodigy", *flags, "--experiment", experiment) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arm 'prodigy' (prodigy) sets its own step size" in err[0] and says in err[0], err
    assert runs_of(experiment) == []


def test_schedule_free_is_evaluated_at_its_averaged_weights(tiny_cifar):
    """It trains at y and is evaluated at x, the average (optimizer.eval(), batch-norm statistics recomputed there):
    what the epoch recorded is the evaluation at x, and y evaluates otherwise."""
    cfg = TrainConfig(
        arm="schedulefree", data_dir=tiny_cifar, batch_size=4, precision="fp32", channels_last="0", epochs=2
    )
    s = prepare(cfg, resolve("schedulefree"), torch.device("cpu"))
    s.handlers, s.epoch = [ScheduleFreeModes()], 1
    train_and_evaluate(s)
    recorded = s.current.test
    assert not s.opt.param_groups[0]["train_mode"]  # left at x: what the run's weights_sha256 records
    assert evaluate(s.model, s.test_loader, s.autocast) == recorded
    s.opt.train()  # back to y, the point it trained at
    assert evaluate(s.model, s.test_loader, s.autocast).loss != recorded.loss


def test_an_lr_free_arm_trains_through_mlflow_run(tiny_cifar, experiment):
    p = mlflow_run(experiment, arm="dadapt_sgd", data_dir=tiny_cifar, epochs=1, batch_size=8)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = runs_of(experiment)
    assert run.info.status == "FINISHED" and run.data.params["arm.optimizer"] == "dadapt_sgd"
    assert run.data.params["optimizer.lr"] == "1.0" and run.data.params["arm.schedule"] == "step"
