"""guard=rollback: an epoch trained at the advisor's LR whose training loss exceeds guard_factor x the previous
epoch's (or is not finite) is trained again from its start at the scheduler's LR; a note joins the calls table."""

import math

from lradvisor.engine import schedules
from lradvisor.engine.loop import train_epoch
from lradvisor.engine.setup import restore, snapshot
from lradvisor.llm import records
from lradvisor.engine.state import RunState


class Guard:
    def __init__(self, advisor):
        self.advisor, self.saved = advisor, None

    def epoch_start(self, s: RunState) -> None:
        """The advisor chose this epoch's LR: keep the state it starts from (on the device)."""
        self.saved = snapshot(s.model, s.opt, s.sched, s.train_loader) if s.advised else None

    def epoch_trained(self, s: RunState) -> None:
        previous = s.history["train_loss"][-1] if s.history["train_loss"] else math.inf
        if self.saved is None or s.trained.loss <= s.cfg.guard_factor * previous:  # nan fails the test: rolled back
            return
        restore(self.saved, s.model, s.opt, s.sched, s.train_loader)
        schedules.override(s.sched, s.opt, s.advised.scheduler_lr)
        records.rollback(
            self.advisor,
            s.advised.exchange_epoch,
            s.epoch,
            s.trained.lrs[0],
            s.trained.loss,
            previous,
            s.advised.scheduler_lr,
            s.journal,
        )
        s.trained = train_epoch(s.model, s.opt, s.train_loader, s.autocast, s.per_step, s.live)
