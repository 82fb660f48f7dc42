"""When the advisor is asked and where its reply applies (`advice`):

    sync        after every `every`-th epoch but the last, ask and wait; the reply sets the next epoch's LR
    async       asked in the background while training goes on at the schedule's LR; the reply is applied from the
                first epoch boundary after it arrives (two epochs after it was asked, at the earliest)
    async_step  the same, from the first batch after it arrives (recorded at that epoch's end)

Every exchange goes to the `exchange` event (the budget counts it); a decision to apply goes to the `decision`
event first (credit branches from the state before it), then its LR is applied (`apply`). Asking after the final
epoch could change nothing, so it is never done.
"""

from lradvisor.engine import schedules
from lradvisor.engine.state import Advised, RunState


def apply(s, exchange_epoch, row, new_lr, scheduler_lr):
    """A decision that applies from the next epoch on: the `decision` event, then its LR (if the rule accepted it)."""
    s.emit("decision", exchange_epoch, row)
    if row["accepted"]:
        schedules.override(s.sched, s.opt, new_lr)
        s.advised = Advised(exchange_epoch, scheduler_lr) if new_lr != scheduler_lr else None


def asks(s):
    return s.arm.every and s.epoch % s.arm.every == 0


class SyncAdvice:
    def __init__(self, advisor):
        self.advisor = advisor

    def decision_point(self, s: RunState) -> None:
        if not asks(s) or s.epoch >= s.cfg.epochs:
            return
        scheduler_lr = s.lr
        new_lr, row = self.advisor.consult(s.epoch, s.history, scheduler_lr, s.journal, s.step)
        s.emit("exchange", row)
        apply(s, s.epoch, row, new_lr, scheduler_lr)


class AsyncAdvice:
    """One exchange in flight at a time: the next prompt carries what its reply did."""

    LAST = 2  # the last epoch asked after is this many before the end: a reply lands after the next epoch

    def __init__(self, advisor):
        self.advisor, self.asked = advisor, None  # asked: the exchange in flight

    def decision_point(self, s: RunState) -> None:
        if s.epoch >= s.cfg.epochs:
            return
        if self.asked and self.asked.ready(s.step + 1):  # arrived during this epoch: applied from the next one
            exchange, self.asked = self.asked, None
            scheduler_lr = s.lr
            new_lr, row = self.advisor.answer(
                exchange,
                self.advisor.decide(exchange.got, scheduler_lr),
                s.history,
                s.journal,
                (s.epoch + 1, s.step + 1),
            )
            s.emit("exchange", row)
            apply(s, exchange.epoch, row, new_lr, scheduler_lr)
        if asks(s) and s.epoch <= s.cfg.epochs - self.LAST:
            if self.asked:
                print(
                    f"  advisor: the reply to the prompt after epoch {self.asked.epoch} is still in flight; not "
                    f"asking after epoch {s.epoch}",
                    flush=True,
                )
            else:
                self.asked = self.advisor.ask_in_background(s.epoch, s.history, s.lr)

    def fit_end(self, s: RunState) -> None:
        if self.asked:  # never waited for: recorded as not applied, with why
            s.emit("exchange", self.advisor.unapplied(self.asked, s.history, s.epoch, s.journal))


class AsyncStepAdvice(AsyncAdvice):
    """A reply lands at the first batch after it arrives; guard and credit, which start from an epoch's beginning,
    are refused with it (config.py)."""

    LAST = 1

    def __init__(self, advisor):
        super().__init__(advisor)
        self.landed = []  # (exchange, decision, (epoch, global batch)): applied, not yet recorded

    def batch_start(self, s: RunState, i: int) -> None:
        at = s.step + i + 1  # the global batch number of batch i of this epoch
        if self.asked and self.asked.ready(at):
            exchange, self.asked = self.asked, None
            decision = self.advisor.decide(exchange.got, s.lr)
            if decision.accepted:
                schedules.override(s.sched, s.opt, decision.applied)
            self.landed.append((exchange, decision, (s.epoch, at)))

    def epoch_end(self, s: RunState) -> None:
        for exchange, decision, at in self.landed:
            s.emit("exchange", self.advisor.answer(exchange, decision, s.history, s.journal, at)[1])
        self.landed.clear()
