"""credit_epochs = k: every decision that moved the LR is measured against its counterfactual. From the same state
and data order, a branch trains k epochs at the scheduler's LR (no advisor); k epochs later the run and the branch
are compared on the decision split (credit_acc, credit_loss in the decision's row of the calls table). The run's
state comes back exactly as it was (engine/branches.py), so a run trains bit for bit the same with credit on or off."""

import time
from typing import NamedTuple

from lradvisor.engine.branches import branch
from lradvisor.llm import records
from lradvisor.engine.state import RunState


class Due(NamedTuple):
    decision: int  # the epoch the decision was made after
    epoch: int  # when the run has trained as long as the branch
    branch: object  # Evaluation of the branch


class Credit:
    def __init__(self, advisor):
        self.advisor, self.due = advisor, []

    def decision(self, s: RunState, exchange_epoch: int, row: dict) -> None:
        """Before the decision's LR is applied: the branch keeps the scheduler's."""
        if not row.get("credit_epochs"):
            return
        t0 = time.perf_counter()
        self.due.append(Due(exchange_epoch, s.epoch + row["credit_epochs"], branch(s, row["credit_epochs"])[0]))
        s.budget["credit_seconds"] += time.perf_counter() - t0

    def epoch_end(self, s: RunState) -> None:
        for due in [d for d in self.due if d.epoch == s.epoch]:
            records.credit(self.advisor, due.decision, s.epoch, s.current.decided, due.branch, s.journal)
            self.due.remove(due)
