"""credit_epochs = k: every decision that moved the LR is measured against its counterfactual. From the same state
and data order, a branch trains k epochs at the scheduler's LR (no advisor); k epochs later the run and the branch
are compared on the decision split (credit_acc, credit_loss in the decision's row of the calls table). The run's
state comes back exactly as it was, so a run trains bit for bit the same with credit on or off."""

import time
from typing import NamedTuple

from lradvisor.engine import schedules
from lradvisor.engine.loop import evaluate, train_epoch
from lradvisor.engine.setup import restore, snapshot
from lradvisor.llm import records


class Due(NamedTuple):
    decision: int  # the epoch the decision was made after
    epoch: int  # when the run has trained as long as the branch
    branch: object  # Evaluation of the branch


class Credit:
    def __init__(self, advisor):
        self.advisor, self.due = advisor, []

    def decision(self, s, exchange_epoch, row):
        """Before the decision's LR is applied: the branch keeps the scheduler's."""
        if not row.get("credit_epochs"):
            return
        t0 = time.perf_counter()
        self.due.append(Due(exchange_epoch, s.epoch + row["credit_epochs"], branch(s, row["credit_epochs"])))
        s.budget["credit_seconds"] += time.perf_counter() - t0

    def epoch_end(self, s):
        for due in [d for d in self.due if d.epoch == s.epoch]:
            records.credit(self.advisor, due.decision, s.epoch, s.current.decided, due.branch, s.journal)
            self.due.remove(due)


def branch(s, k):
    """The counterfactual of a decision: from the state right now (the schedule stepped, the advisor's LR not yet
    applied), k epochs at the schedule's own LR with no advisor, in the same data order; its Evaluation on the
    decision split after them. The run's model, optimizer, schedule and data RNG come back exactly as they were."""
    saved = snapshot(s.model, s.opt, s.sched, s.train_loader)
    try:
        for i in range(k):
            trained = train_epoch(s.model, s.opt, s.train_loader, s.autocast, s.per_step)
            if i < k - 1:  # the schedule as the run steps it (plateau: on the validation loss with a holdout)
                plateau_on_val = s.arm.schedule == "plateau" and s.cfg.holdout > 0
                metric = evaluate(s.model, s.decision_loader, s.autocast).loss if plateau_on_val else trained.loss
                schedules.after_epoch(s.arm.schedule, s.sched, metric)
        return evaluate(s.model, s.decision_loader, s.autocast)
    finally:
        restore(saved, s.model, s.opt, s.sched, s.train_loader)
