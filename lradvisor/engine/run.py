"""Train one run (`lradvisor train`): ResNet-18 on a data set, SGD + an LR schedule, optionally an advisor choosing
the next epoch's LR, tracked in MLflow from its params to its final weights' digest.

Decisions read held-out numbers (per-class accuracy, plateau's metric, credit) from the decision split: a validation
split of the training set with holdout > 0, else (the published protocol) the test set.
"""

import dataclasses
import sys
import warnings

import mlflow
import torch

from lradvisor import tracking
from lradvisor.arms import flag, llm_tag, resolve, run_name
from lradvisor.data.files import checksums
from lradvisor.data.registry import DATASETS
from lradvisor.engine import optimizers
from lradvisor.engine.advice import AsyncAdvice, AsyncStepAdvice, SyncAdvice
from lradvisor.engine.branches import GRID, ORACLE_HORIZON, ORACLE_TABLE, Oracle
from lradvisor.engine.credit import Credit
from lradvisor.engine.device import native_bf16, pick_channels_last, pick_device, pick_precision
from lradvisor.engine.guard import Guard
from lradvisor.engine.loop import fit
from lradvisor.engine.observers import Budget, Console, Recorder
from lradvisor.engine.optimizers import ScheduleFreeModes
from lradvisor.engine.pruner import Pruner
from lradvisor.engine.setup import prepare, sizes, weights_digest
from lradvisor.errors import ServerLost
from lradvisor.llm.advisor import Advisor
from lradvisor.tracking import CLASS_METRICS, CLASS_TABLE, TABLE

ADVICE = {"sync": SyncAdvice, "async": AsyncAdvice, "async_step": AsyncStepAdvice}


def handlers(cfg, arm, advisor, on_epoch=None, measure=None):
    """Who acts on the loop's events (engine/loop.py), in the order they act on each:

    ScheduleFreeModes  epoch_start, epoch_trained: the optimizer's train / eval mode (schedulefree), first
    Guard      epoch_start, epoch_trained  (guard rollback)   before anything reads the epoch
    Recorder   epoch_end                                      the epoch's metrics, before anyone reacts to them
    Console    epoch_end                                      its line, before the advisor's lines under it
    measure    decision_point (the decision benchmark, engine/branches.Measure): the state before anyone decides
    advice     batch_start, epoch_end, decision_point, fit_end
    Oracle     decision_point (the arm oracle, engine/branches.py): it decides in the advice's place
    Credit     decision: before the advised LR is applied (advice.apply emits it first); epoch_end: the branches
               due, after async_step's replies are recorded
    Budget     exchange; fit_end: after the advice recorded the exchange still in flight
    Pruner     epoch_end, last: it may stop the run, and everything about the epoch is recorded by then
    """
    chain = [ScheduleFreeModes()] if arm.optimizer == "schedulefree" else []
    chain += [Guard(advisor)] if advisor and cfg.guard == "rollback" else []
    chain += [Recorder(), Console()] + ([measure] if measure else [])
    if arm.oracle:
        chain.append(Oracle())
    if advisor:
        chain.append(ADVICE[cfg.advice](advisor))
        if cfg.credit_epochs:
            chain.append(Credit(advisor))
    chain.append(Budget(advisor))
    if on_epoch:
        chain.append(Pruner(on_epoch))
    return chain


def params_of(cfg, arm, advisor, device, s):
    """The run's settings and what it found it trains with, as MLflow params (an LR-free optimizer's own settings
    too; SGD's are the run's lr, momentum and weight_decay)."""
    opt = (
        {
            "arm.optimizer": arm.optimizer,
            **{f"optimizer.{k}": v for k, v in optimizers.settings(arm.optimizer, cfg, len(s.train_loader)).items()},
        }
        if arm.optimizer != "sgd"
        else {}
    )
    if arm.oracle:  # what the oracle chose from, and how far it looked
        opt.update({"oracle.grid": ",".join(f"{m:g}" for m in GRID), "oracle.horizon": ORACLE_HORIZON})
    return {
        **cfg.params(),
        **opt,
        "arm.signals": ",".join(arm.signals) or "none",
        "arm.every": arm.every,
        "arm.advisor": arm.advisor if arm.every else "none",
        "arm.schedule": arm.schedule,
        "llm_model_used": advisor.model_used if advisor else "none",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision_used": pick_precision(cfg.precision, device),
        "channels_last_used": int(pick_channels_last(cfg.channels_last, device)),
        "torch_version": torch.__version__,
        **dict(zip(("n_train", "n_val", "n_test"), sizes(s))),
    }


def warn_about(cfg, arm, device):
    """Settings that run, but not as one might think: one line each."""
    if arm.every and arm.every >= cfg.epochs:
        warnings.warn(
            f"arm {cfg.arm!r} asks every {arm.every} epochs and never after the last one: in "
            f"{cfg.epochs} epochs it will make no call"
        )
    elif arm.every and cfg.advice == "async" and arm.every > cfg.epochs - 2:
        warnings.warn(
            f"arm {cfg.arm!r} asks every {arm.every} epochs; under advice async a reply lands two "
            f"epochs after it is asked at the earliest: in {cfg.epochs} epochs it will make no call"
        )
    tried = DATASETS[cfg.dataset]["tried"]
    if any(getattr(cfg, k) != v for k, v in tried.items()):
        warnings.warn(
            f"{cfg.dataset} is best tried with "
            + " ".join(flag(k, v) for k, v in tried.items())
            + "; this run trains with "
            + ", ".join(f"{k} {getattr(cfg, k):g}" for k in tried)
            + " as given"
        )
    if cfg.precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(
            "this CPU has no native bf16 (AVX512-BF16 or AMX, usable here): bf16 is emulated, ~4x slower "
            f"than fp32 or worse; {flag('precision', 'auto')} would pick fp32"
        )


def main(cfg, run_id=None, on_epoch=None, measure=None):
    """A checked TrainConfig in, a finished MLflow run out. Raises UsageError/DataError before any run exists.
    A search trains its trials here, in its own process: `run_id` is the run it made for the trial, and
    `on_epoch(epoch, metrics)` judges each epoch once it is logged (engine/pruner.py); the decision benchmark
    its trajectories, `measure` the handler that measures them (engine/branches.Measure)."""
    arm = resolve(cfg.arm, cfg.signals, cfg.every, cfg.advisor, cfg.schedule)
    if cfg.schedule_file != "none":
        arm = dataclasses.replace(arm, schedule="file")
    device = pick_device(cfg.device)
    warn_about(cfg, arm, device)
    advisor = Advisor(cfg, arm) if arm.every else None  # checks credentials / the replay run before training starts
    arm = advisor.arm if advisor else arm
    s = prepare(cfg, arm, device)  # the data on the device, uint8; model, optimizer, schedule

    # Ctrl-C or SIGTERM (a sweep stopping its children) ends the run KILLED, not RUNNING, and only once.
    with tracking.interrupts_end_runs():
        tag = llm_tag(cfg.llm_model, cfg.temperature) if arm.asks_llm else ""
        name = None if run_id else run_name(cfg.arm, cfg.dataset, cfg.seed, tag)
        try:
            run = tracking.open_run(cfg.experiment, run_name=name, run_id=run_id, unique=True)
        except Exception as e:  # the server went away between the start-up check and here (a sweep's child)
            why = tracking.server_down(timeout=3)
            if why:
                raise ServerLost(
                    f"lost the tracking server {mlflow.get_tracking_uri()} ({why}) before the run could start"
                ) from e
            raise
        try:
            tracking.log_params_once(params_of(cfg, arm, advisor, device, s))
            bad = checksums(cfg.data_dir, cfg.dataset)
            md5 = "differs: " + ",".join(bad) if bad else "official" if DATASETS[cfg.dataset]["files"] else "bundled"
            with tracking.writing():
                mlflow.set_tags(
                    {"arm": cfg.arm, "data_md5": md5, "decisions_saw_test": advisor.saw_test() if advisor else 0}
                )
                # Tables the UI shows as tables: the advisor's calls; per-class accuracy where there are too many
                # classes for one metric each.
                many = len(DATASETS[cfg.dataset]["classes"]) > CLASS_METRICS
                tracking.declare_tables(
                    ([TABLE] if advisor else [])
                    + ([CLASS_TABLE] if many else [])
                    + ([ORACLE_TABLE] if arm.oracle else [])
                )
                if advisor:
                    advisor.prepare_run()
                if arm.schedule == "file":  # what the run followed goes with it
                    mlflow.log_artifact(cfg.schedule_file)
            s.handlers = handlers(cfg, arm, advisor, on_epoch, measure)
            fit(s)
            with tracking.writing():
                mlflow.set_tag("weights_sha256", weights_digest(s.model))
        except BaseException as e:
            why = None if isinstance(e, KeyboardInterrupt) else tracking.server_down(timeout=3)
            if why:  # nothing more can be recorded there: keep it here and say where
                path = tracking.save_unsent(run.info.run_id, s.journal)
                raise ServerLost(
                    f"lost the tracking server {mlflow.get_tracking_uri()} ({why}); the run stays "
                    f"RUNNING there; what it could not send is in {path}"
                ) from e
            for h in s.handlers:  # what the exchanges cost, whatever the ending (those recorded; not one in flight)
                if isinstance(h, Budget):
                    h.log(s)
            if isinstance(e, KeyboardInterrupt):
                tracking.end_failed("KILLED", str(e) or "interrupted (Ctrl-C)")
            else:
                tracking.end_failed("FAILED", f"{type(e).__name__}: {e}", e)
            raise
        if advisor:
            mlflow.flush_trace_async_logging()  # traces are exported in the background; finish before the run does
        tracking.end_finished()
    links = (
        ""
        if run_id
        else (
            f"\n  view the run: {tracking.ui_link(run.info.experiment_id, run.info.run_id)}\n"
            f"  view all runs: {tracking.ui_link(run.info.experiment_id)}"
        )
    )  # a search links its own
    print(
        f"run {run.info.run_id} finished: test_acc {s.current.test.acc:.2f}% after {s.epoch} epochs{links}",
        file=sys.stderr,
    )
    return run.info.run_id
