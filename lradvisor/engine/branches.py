"""Branches: from the state of a run at a decision point (the schedule stepped, no decision applied yet), an action
(an LR) trained for some epochs and evaluated, and the run's state put back exactly as it was, so the run trains bit
for bit as it would without. Three decision-makers are built on them:

    credit      (engine/credit.py) every decision that moved the LR, against k epochs at the scheduler's LR
    Measure     (the decision benchmark, lradvisor/decisions/) every action of a grid of LRs, for some data orders,
                from every decision point of a trajectory: each one's outcome on the decision split and the test set
    Oracle      (the arm `oracle`) every action of the grid for ORACLE_HORIZON epochs on the validation split, and the
                best one applied: an upper reference for any per-epoch controller at that cadence (greedy, and subject
                to the short-horizon bias of Wu et al. 2018: the best action for one epoch need not be the best for
                the run)
"""

import math
import time

import mlflow

from lradvisor import tracking
from lradvisor.engine import schedules
from lradvisor.engine.loop import evaluate, train_epoch
from lradvisor.engine.setup import restore, snapshot
from lradvisor.engine.state import RunState

GRID = (0.1, 0.3, 1.0, 3.0, 10.0)  # actions: multiples of the scheduler's LR
ORACLE_HORIZON = 1  # epochs the oracle arm looks ahead
ORACLE_TABLE = "oracle/branches.json"


def branch(s, k, lr=None, order=None, test=False):
    """From the state right now, k epochs at `lr` (None: the scheduler's own; else set as an advisor would: the rest of
    the schedule scaled, engine/schedules.py) in the run's own data order, or in the order seeded by `order`; then
    (the decision split's Evaluation, the test set's or None). The run's model, optimizer, schedule and data RNG come
    back exactly as they were."""
    saved = snapshot(s.model, s.opt, s.sched, s.train_loader)
    try:
        if lr is not None:
            schedules.override(s.sched, s.opt, lr)
        if order is not None:
            s.train_loader.generator.manual_seed(order)
        for i in range(k):
            trained = train_epoch(s.model, s.opt, s.train_loader, s.autocast, s.per_step)
            if i < k - 1:  # the schedule as the run steps it (plateau: on the validation loss with a holdout)
                plateau_on_val = s.arm.schedule == "plateau" and s.cfg.holdout > 0
                metric = evaluate(s.model, s.decision_loader, s.autocast).loss if plateau_on_val else trained.loss
                schedules.after_epoch(s.arm.schedule, s.sched, metric)
        decided = evaluate(s.model, s.decision_loader, s.autocast)
        tested = evaluate(s.model, s.test_loader, s.autocast) if test and s.val_loader else decided if test else None
        return decided, tested
    finally:
        restore(saved, s.model, s.opt, s.sched, s.train_loader)


def horizon_of(s, horizon):
    """Epochs a branch trains: `horizon`, or to the end of the run ("end"), never past it."""
    left = s.cfg.epochs - s.epoch
    return left if horizon == "end" else min(int(horizon), left)


class Measure:
    """The decision benchmark's handler on a trajectory: at every decision point (but after the last epoch), unless
    the state was measured already (`done`: a resumed build), every multiplier of `grid` times the scheduler's LR
    is trained for `horizon` epochs in each of `replicates` data orders, and `record(state, variables, rows)` keeps
    the state's prompt variables and its outcome rows. Acts before the trajectory's own advisor decides. A trajectory
    `like_baseline` (the baseline's schedule and optimizer) skips its states before its first decision: they are the
    baseline's (the same seed trains the same until something decides otherwise)."""

    def __init__(self, name, grid, horizon, replicates, done, record, like_baseline=False):
        self.name, self.grid, self.horizon, self.replicates = name, grid, horizon, replicates
        self.done, self.record, self.like_baseline = done, record, like_baseline

    def decision_point(self, s: RunState) -> None:
        state = f"{self.name}-s{s.cfg.seed}-e{s.epoch}"
        if s.epoch >= s.cfg.epochs or state in self.done:
            return
        if self.like_baseline and not s.history.get("proposals"):  # nothing decided yet: the baseline's state
            return
        t0, k, scheduler_lr = time.perf_counter(), horizon_of(s, self.horizon), s.lr
        rows = []
        for r in range(self.replicates):
            order = 1_000_003 * s.cfg.seed + 1_009 * s.epoch + r  # the same for every action: outcomes pair
            for m in self.grid:
                val, test = branch(s, k, m * scheduler_lr, order, test=True)
                rows.append(
                    {
                        "state": state,
                        "multiplier": m,
                        "lr": m * scheduler_lr,
                        "replicate": r,
                        "val_acc": val.acc,
                        "val_loss": val.loss,
                        "test_acc": test.acc,
                        "test_loss": test.loss,
                        "horizon_epochs": k,
                    }
                )
        variables = {
            "state": state,
            "trajectory": self.name,
            "seed": s.cfg.seed,
            "epoch": s.epoch,
            "epochs": s.cfg.epochs,
            "scheduler_lr": scheduler_lr,
            "history": {key: list(v) for key, v in s.history.items()},
        }
        self.record(state, variables, rows, time.perf_counter() - t0)


class Oracle:
    """The arm `oracle`: after every epoch but the last, each action of GRID is branched ORACLE_HORIZON epochs on
    the validation split, and the best applied from the next epoch on (as an advisor's LR is). Every branch's outcome
    is a row of ORACLE_TABLE; their seconds are the budget's oracle_seconds."""

    def __init__(self):
        self.rows = []

    def decision_point(self, s: RunState) -> None:
        if s.epoch >= s.cfg.epochs:
            return
        t0, scheduler_lr = time.perf_counter(), s.lr
        k = horizon_of(s, ORACLE_HORIZON)
        outcomes = [(branch(s, k, m * scheduler_lr)[0], m) for m in GRID]
        best = max(outcomes, key=lambda o: (o[0].acc, -o[0].loss if math.isfinite(o[0].loss) else -math.inf))[1]
        self.rows += [
            {
                "epoch": s.epoch,
                "multiplier": m,
                "lr": m * scheduler_lr,
                "val_acc": e.acc,
                "val_loss": e.loss,
                "chosen": m == best,
            }
            for e, m in outcomes
        ]
        schedules.override(s.sched, s.opt, best * scheduler_lr)
        s.budget["oracle_seconds"] = s.budget.get("oracle_seconds", 0.0) + time.perf_counter() - t0
        s.journal.append({"epoch": s.epoch, "oracle": self.rows[-len(GRID) :]})
        with tracking.writing():
            tracking.write_table(self.rows, ORACLE_TABLE)
            mlflow.log_metric("oracle_multiplier", best, step=s.epoch)
        print(
            f"  oracle after epoch {s.epoch}: x{best:g} (lr {best * scheduler_lr:.4g}) of "
            + ", ".join(f"x{m:g} {e.acc:.1f}%" for e, m in outcomes),
            flush=True,
        )
