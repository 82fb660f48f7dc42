"""The training loop: every epoch trained and evaluated, then a decision point; the handlers of a run (engine/run.py
lists them, in the order they act) do the rest on these events:

    epoch_start     an epoch is about to train          guard: keep the state, should the advisor's LR blow up
    batch_start(i)  before batch i (only when a handler  advice async_step: a reply lands at a batch
                    listens: nothing is called per step
                    otherwise)
    epoch_trained   trained, not yet evaluated          guard: roll the epoch back and train it again
    epoch_end       evaluated (state.current)           observers log and print it; async_step records the replies
                                                        it applied; credit records the branches due; a pruner may
                                                        stop the run (StopRun)
    decision_point  the schedule has stepped            the advisor is asked, or its reply lands
    decision        a decision is about to be applied   credit: a branch from the state before it
    exchange        an exchange was recorded            the budget counts it
    fit_end         the last epoch is done              advice: an exchange in flight is recorded; the budget logged

train_epoch and evaluate read back from the device once each: nothing syncs per step.
"""

import math
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lradvisor.data.loader import Loader
from lradvisor.data.registry import DATASETS
from lradvisor.engine import schedules
from lradvisor.engine.optimizers import effective_lr
from lradvisor.engine.state import Epoch, Evaluation, RunState, Trained
from lradvisor.errors import TrainingError
from lradvisor.tracking import CLASS_METRICS


class StopRun(Exception):
    """A handler ends the run after this epoch (a pruned trial); its tag stopped_early says why."""


def fit(s: RunState) -> None:
    """Train the run in `s` (engine/state.py) from its first epoch to its last, or until a handler stops it."""
    try:
        for epoch in range(1, s.cfg.epochs + 1):
            s.epoch = epoch
            train_and_evaluate(s)
            # plateau steps on the validation loss with a holdout, else on the training loss; the others ignore it
            schedules.after_epoch(s.arm.schedule, s.sched, (s.current.val or s.current.trained).loss)
            s.advised = None
            s.emit("decision_point")
    except StopRun:
        pass
    s.emit("fit_end")


def train_and_evaluate(s: RunState) -> None:
    """One epoch of `s`: trained (the guard may train it again), evaluated, recorded in s.current, the history and the
    step counter; what a PBT member runs for each of its epochs too. TrainingError when the training loss is not
    finite."""
    s.journal.clear()
    t0 = time.perf_counter()
    s.live = f"epoch {s.epoch:3d}/{s.cfg.epochs}  lr {s.lr:.4g}" if sys.stdout.isatty() else ""
    s.emit("epoch_start")
    at_batch = (lambda i: s.emit("batch_start", i)) if any(hasattr(h, "batch_start") for h in s.handlers) else None
    s.trained = train_epoch(s.model, s.opt, s.train_loader, s.autocast, s.per_step, s.live, at_batch)
    s.emit("epoch_trained")
    train_s = time.perf_counter() - t0
    lr = s.trained.lrs[0]  # the LR the epoch started at (under async_step a reply may land at its first batch)
    if not math.isfinite(s.trained.loss):
        raise TrainingError(
            f"training loss became non-finite ({s.trained.loss}) in epoch {s.epoch} at lr {lr:g}; "
            "lower --lr, or set --max-factor or --guard rollback"
        )
    test = evaluate(s.model, s.test_loader, s.autocast)
    val = evaluate(s.model, s.val_loader, s.autocast) if s.val_loader else None
    metrics = {
        "lr": lr,
        "train_loss": s.trained.loss,
        "train_acc": s.trained.acc,
        "test_loss": test.loss,
        "test_acc": test.acc,
        "grad_norm": s.trained.grad_norm,
    }
    if val:
        metrics.update(val_loss=val.loss, val_acc=val.acc)
    if len(test.per_class) <= CLASS_METRICS:  # one metric per class; else rows of a table (engine/observers.py)
        metrics.update({f"class_acc/{c}": a for c, a in test.per_class.items()})
        if val:
            metrics.update({f"val_class_acc/{c}": a for c, a in val.per_class.items()})
    seconds = time.perf_counter() - t0
    s.budget["train_seconds"] += seconds
    metrics.update(epoch_seconds=seconds, images_per_second=len(s.train_loader.y) / train_s)
    s.current = Epoch(s.epoch, s.step + 1, s.trained, test, val, train_s, seconds, metrics)
    s.step += len(s.trained.lrs)
    for key, value in (
        ("lr", lr),
        ("train_loss", s.trained.loss),
        ("grad_norm", s.trained.grad_norm),
        ("class_acc", s.current.decided.per_class),
    ):
        s.history[key].append(value)
    s.emit("epoch_end")


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together, as a device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loader: Loader,
    autocast: Callable,
    sched=None,
    live: str = "",
    before_step: Callable[[int], None] | None = None,
) -> Trained:
    """One epoch; `sched` is stepped after every batch (per-step schedules). Returns loss, accuracy, mean
    gradient norm and the LR of every step. `live` (a prefix) shows a step counter on a terminal.
    `before_step(i)` is called before batch i (from 0): where advice async_step lands a reply (host-side only)."""
    model.train()
    dev = loader.x.device
    loss_sum, correct, norm_sum = (torch.zeros((), device=dev) for _ in range(3))
    params = [p for p in model.parameters() if p.requires_grad]
    n = steps = 0
    lrs = []
    for xb, yb in loader:
        if before_step:
            before_step(steps)
        lrs.append(effective_lr(opt))  # a host float: SGD's lr, or the step size an LR-free optimizer chose
        with autocast():
            out = model(xb)
            loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm_sum += total_grad_norm(params)  # before the optimizer step, as the prompt describes it
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach().float() * len(yb)
        correct += (out.argmax(1) == yb).sum()
        n, steps = n + len(yb), steps + 1
        if live and steps % 10 == 0:
            print(f"\r{live} step {steps}/{len(loader)}", end="", flush=True)
    loss_sum, correct, norm_sum = torch.stack([loss_sum, correct, norm_sum]).tolist()  # the one sync
    return Trained(loss_sum / n, 100 * correct / n, norm_sum / steps, lrs)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Loader, autocast: Callable) -> Evaluation:
    """(loss, accuracy, {class name: accuracy}) over the loader's data set, read back in one sync."""
    model.eval()
    dev = loader.x.device
    classes = DATASETS[loader.dataset]["classes"]
    loss_sum = torch.zeros((), device=dev)
    right = torch.zeros(len(classes), device=dev)
    total = torch.zeros(len(classes), device=dev)
    for xb, yb in loader:
        with autocast():
            out = model(xb)
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        right.index_add_(0, yb, (out.argmax(1) == yb).float())
        total.index_add_(0, yb, torch.ones_like(yb, dtype=torch.float))
    per_class = 100 * right / total.clamp(min=1)
    loss_sum, n, n_right, *per_class = torch.cat(
        [torch.stack([loss_sum, total.sum(), right.sum()]), per_class]
    ).tolist()
    return Evaluation(loss_sum / n, 100 * n_right / n, dict(zip(classes, per_class)))
