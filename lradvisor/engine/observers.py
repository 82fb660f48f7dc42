"""Observers: they record the run and change nothing in it. Each epoch's metrics to MLflow (the journal first: the
tracking server may go away), its line on the console, and the budget of what the run cost."""

import mlflow

from lradvisor import tracking
from lradvisor.llm import zoo
from lradvisor.tracking import CLASS_METRICS, CLASS_TABLE
from lradvisor.engine.state import RunState


class Recorder:
    """Each epoch's row of metrics (state.Epoch.metrics); the per-class accuracy of a data set with more classes than
    metrics shown (CLASS_TABLE, one row per epoch and class); and the LR of every batch where it moves within an
    epoch (lr_step, step = global batch number)."""

    def __init__(self):
        self.class_rows = []

    def epoch_end(self, s: RunState) -> None:
        e = s.current
        few = len(e.test.per_class) <= CLASS_METRICS
        if not few:
            self.class_rows += [
                {"epoch": s.epoch, "class": c, "test_acc": a, **({"val_acc": e.val.per_class[c]} if e.val else {})}
                for c, a in e.test.per_class.items()
            ]
        s.journal.append({"epoch": s.epoch, "metrics": e.metrics})
        with tracking.writing():
            mlflow.log_metrics(e.metrics, step=s.epoch)
            if not few:
                tracking.write_table(self.class_rows, CLASS_TABLE)
        if s.per_step or s.cfg.advice == "async_step" or s.arm.optimizer != "sgd":  # host floats already: no sync
            tracking.log_series("lr_step", e.trained.lrs, first_step=e.first_step)


class Console:
    def epoch_end(self, s: RunState) -> None:
        e = s.current
        print(
            f"{chr(13) if s.live else ''}epoch {s.epoch:3d}/{s.cfg.epochs}  lr {e.metrics['lr']:.4g}  train_loss "
            f"{e.trained.loss:.4f}  test_acc {e.test.acc:6.2f}%"
            + (f"  val_acc {e.val.acc:6.2f}%" if e.val else "")
            + f"  {e.seconds:6.1f}s",
            flush=True,
        )


class Budget:
    """What the run cost (state.empty_budget): every exchange counted as it is recorded, the training seconds as the
    loop adds them; logged as metrics at the end, whatever the advisor, for compare's budget columns."""

    def __init__(self, advisor):
        self.advisor, self.unpriced = advisor, []  # unpriced: exchanges whose cost is unknown (no token counts)

    def exchange(self, s: RunState, row: dict) -> None:
        b = s.budget
        b["llm_calls"] += 1
        b["llm_failed_calls"] += row["reply"] is None and row["latency_s"] is not None  # every attempt failed
        b["llm_retry_seconds"] += row["retry_wait_s"] or 0
        b["llm_seconds"] += (row["latency_s"] or 0) - (row["retry_wait_s"] or 0)
        b["llm_tokens"] += sum(row[k] or 0 for k in ("prompt_tokens", "output_tokens", "thought_tokens"))
        b["llm_cost_usd"] += row["cost_usd"] or 0
        b["advisor_changes"] += row["changed"]
        if row["cost_usd"] is None:
            self.unpriced.append(row["epoch"])

    def fit_end(self, s: RunState) -> None:
        self.log(s)

    def log(self, s: RunState) -> None:
        """The budget as metrics: at the end, or when the run fails or is killed (run.py)."""
        if self.advisor and s.arm.asks_llm:
            if not zoo.priced(self.advisor.llm):  # no price known: the cost is left empty, never 0
                s.budget.pop("llm_cost_usd", None)
            elif self.unpriced:  # priced, but some exchanges never said their tokens: the sum is of the others
                with tracking.writing():
                    mlflow.set_tag(
                        "llm_cost_unknown",
                        "llm_cost_usd leaves out the exchange(s) after epoch(s) "
                        f"{', '.join(map(str, self.unpriced))}: no token counts (no reply, or none yet)",
                    )
        s.journal[:] = [{"budget": s.budget}]
        with tracking.writing():
            mlflow.log_metrics(s.budget)
