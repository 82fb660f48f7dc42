"""A run while it trains: one RunState that the loop and every handler read and change, and the records they pass
(named, never tuples read by index)."""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from lradvisor.engine.optimizers import effective_lr
from lradvisor.engine.schedules import PER_STEP


class Trained(NamedTuple):
    """One epoch's training, as train_epoch returns it: mean loss and accuracy, mean gradient norm, every step's LR."""

    loss: float
    acc: float
    grad_norm: float
    lrs: list


class Evaluation(NamedTuple):
    """A split after an epoch: loss, accuracy, and {class name: accuracy} (accuracies in %)."""

    loss: float
    acc: float
    per_class: dict


@dataclass
class Epoch:
    """What an epoch gave, for the observers and the handlers after it."""

    number: int
    first_step: int  # global batch number of its first batch
    trained: Trained
    test: Evaluation
    val: Evaluation | None  # with a holdout
    train_seconds: float
    seconds: float  # training and evaluation
    metrics: dict  # the row it logs: lr, losses, accuracies, gradient norm, per-class accuracy, timing

    @property
    def decided(self):
        """What decisions may read: with a holdout, never the test set."""
        return self.val or self.test


class Advised(NamedTuple):
    """The advisor set this epoch's LR: after which epoch it was asked, and the scheduler's LR it replaced."""

    exchange_epoch: int
    scheduler_lr: float


def empty_history():
    """Per-epoch lists the prompt reads ('proposals' joins when the advisor answers)."""
    return {"lr": [], "train_loss": [], "grad_norm": [], "class_acc": []}


def empty_budget():
    """What the run cost, for compare's budget columns: LLM calls (and how many failed), tokens (prompt + output +
    thinking), USD (from the models file's prices), seconds in requests and seconds waited between attempts, seconds of
    training + evaluation, seconds of credit branches; and how often the advisor's answer changed the LR."""
    return {
        "llm_calls": 0,
        "llm_failed_calls": 0,
        "llm_tokens": 0,
        "llm_cost_usd": 0.0,
        "llm_seconds": 0.0,
        "llm_retry_seconds": 0.0,
        "train_seconds": 0.0,
        "credit_seconds": 0.0,
        "advisor_changes": 0,
    }


@dataclass
class RunState:
    cfg: object  # TrainConfig
    arm: object  # arms.Arm
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    autocast: object
    train_loader: object
    val_loader: object  # None without a holdout
    test_loader: object
    epoch: int = 0
    step: int = 0  # global batch number of the last batch trained
    history: dict = field(default_factory=empty_history)
    budget: dict = field(default_factory=empty_budget)
    journal: list = field(default_factory=list)  # what the epoch logs, kept until sent (tracking.save_unsent)
    trained: Trained | None = None  # the epoch as trained so far (the guard may train it again)
    current: Epoch | None = None  # the epoch as evaluated
    advised: Advised | None = None  # set when the advisor chose the LR of the epoch about to train
    live: str = ""  # the console's step-counter prefix while an epoch trains (a terminal only)
    handlers: list = field(default_factory=list)  # in the order they act (engine/run.py)

    @property
    def per_step(self):
        """The schedule when it steps after every batch (cosine, onecycle, linear), else None."""
        return self.sched if self.arm.schedule in PER_STEP else None

    @property
    def decision_loader(self):
        return self.val_loader or self.test_loader

    @property
    def lr(self):
        """The optimizer's LR now: what the next step trains at."""
        return effective_lr(self.opt)

    def emit(self, event, *args):
        """Every handler that acts on `event`, in order (engine/loop.py lists the events)."""
        for handler in self.handlers:
            act = getattr(handler, event, None)
            if act is not None:
                act(self, *args)
