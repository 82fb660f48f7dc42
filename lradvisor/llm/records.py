"""What an exchange leaves in MLflow: a row of advisor/calls.json (the decision first, the long texts last), the
prompt and reply bytes as text artifacts with a readable page of both, two metrics and a trace span; later, a
decision's credit against its branch (credit_epochs) and the guard's notes of rolled-back epochs.
"""

import html

import mlflow

from lradvisor import tracking
from lradvisor.tracking import TABLE


def exchange(advisor, ex, got, decision, changed, applied_at, journal=None):
    """Record an exchange (llm/advisor.py's Exchange, with `got` as it is recorded) and return its row."""
    cfg = advisor.cfg
    # The trace list shows span names: say which run and epoch each exchange belongs to; its time is the request's.
    span = mlflow.start_span_no_context(
        name=f"{cfg.arm} s{cfg.seed} epoch {ex.epoch}",
        span_type="LLM",
        start_time_ns=ex.sent,
        inputs={"arm": cfg.arm, "seed": cfg.seed, "epoch": ex.epoch, "model": advisor.model, "prompt": ex.text},
    )
    span.end(
        outputs={
            "parsed_lr": decision.proposed,
            "applied_lr": decision.applied,
            "accepted": decision.accepted,
            "changed": changed,
            "reason": decision.reason,
            "applied_epoch": applied_at and applied_at[0],
            **{k: v for k, v in got.items() if k not in ("model", "error_body")},
        },
        end_time_ns=ex.arrived,
    )
    credit = {}
    if cfg.credit_epochs:  # which decisions get a counterfactual branch (engine/credit.py trains it), and why not
        # It starts where the decision is applied: after `epoch` under sync, where the reply landed under async.
        k = (
            min(cfg.credit_epochs, cfg.epochs - applied_at[0] + 1)
            if applied_at and decision.accepted and changed
            else 0
        )
        credit = {
            "credit_acc": None,
            "credit_loss": None,
            "credit_epochs": k,
            "credit_note": f"pending: against {k} epoch(s) at the scheduler's lr {decision.scheduler_lr:g}"
            if k
            else "no branch: the scheduler's LR was applied"
            if applied_at
            else "no branch: never applied",
        }
    # applied_epoch / applied_step: the first epoch and global batch trained at the decision (empty: never applied).
    row = {
        "epoch": ex.epoch,
        "applied_epoch": applied_at and applied_at[0],
        "applied_step": applied_at and applied_at[1],
        "parsed_lr": decision.proposed,
        "scheduler_lr": decision.scheduler_lr,
        "applied_lr": decision.applied,
        "accepted": decision.accepted,
        "changed": changed,
        "reason": decision.reason,
        **credit,
        "model": got.get("model"),
        "model_version": got.get("model_version"),
        "response_format": got.get("response_format"),
        "attempts": got.get("attempts"),
        "latency_s": got.get("latency_s"),
        "retry_wait_s": got.get("retry_wait_s"),
        "prompt_tokens": got.get("prompt_tokens"),
        "output_tokens": got.get("output_tokens"),
        "thought_tokens": got.get("thought_tokens"),
        "cost_usd": got.get("cost_usd"),
        "finish_reason": got.get("finish_reason"),
        "prompt": ex.text,
        "reply": got.get("reply"),
    }
    if journal is not None:
        journal.append({"epoch": ex.epoch, "advisor": row})
    folder = f"advisor/epoch_{ex.epoch:02d}"
    metrics = {"advisor_accepted": float(decision.accepted)}
    if decision.proposed is not None:
        metrics["advisor_proposed_lr"] = decision.proposed
    advisor.calls.append(row)
    with tracking.writing():
        tracking.write_table(advisor.calls, TABLE)
        mlflow.log_text(ex.text, f"{folder}/prompt.txt")  # the exact bytes sent and received
        mlflow.log_text(got.get("reply") or "", f"{folder}/reply.txt")
        # the same, readable in the UI's preview
        mlflow.log_text(exchange_page(row, cfg.advice == "sync"), f"{folder}/exchange.html")
        if got.get("error_body"):  # the server's whole answer; the table and the console keep one line of it
            mlflow.log_text(got["error_body"], f"{folder}/error.txt")
        mlflow.log_metrics(metrics, step=ex.epoch)
    return row


PAGE = (
    "<!doctype html><meta charset='utf-8'><style>body{{font:13px/1.45 ui-monospace,monospace;margin:8px}}"
    "pre{{white-space:pre-wrap;overflow-wrap:anywhere;margin:0 0 12px}}h3{{font:600 13px sans-serif;margin:10px 0 4px}}"
    "</style><h3>epoch {epoch}: {decision}</h3><h3>prompt (sent)</h3><pre>{prompt}</pre>"
    "<h3>reply (received)</h3><pre>{reply}</pre>"
)


def exchange_page(row, sync=True):
    """The UI previews .txt files unwrapped and cut at its width, but renders HTML: the prompt and the reply as
    escaped, wrapping text (a reply's <think> tags show as written), under the decision."""
    lr = "-" if row["parsed_lr"] is None else f"{row['parsed_lr']:g}"
    if row["applied_lr"] is None:
        decision = f"parsed {lr}, not applied ({row['reason']})"
    elif sync:
        decision = f"parsed {lr}, next lr {row['applied_lr']:g} ({row['reason']})"
    else:
        decision = (
            f"parsed {lr}, lr {row['applied_lr']:g} from epoch {row['applied_epoch']}, step "
            f"{row['applied_step']} ({row['reason']})"
        )
    return PAGE.format(
        epoch=row["epoch"],
        decision=html.escape(decision),
        prompt=html.escape(row["prompt"]),
        reply=html.escape(row["reply"]) if row["reply"] is not None else "(none)",
    )


def credit(advisor, decision, epoch, run, branch, journal=None):
    """The decision after epoch `decision` against its branch, both evaluated on the decision split at `epoch`: run,
    branch are Evaluations (loss, accuracy). Fills in the decision's row of calls.json, logs credit_acc and
    credit_loss at step = the decision's epoch, and says it on the console."""
    split = advisor.cfg.decision_split
    row = next(r for r in advisor.calls if r["epoch"] == decision and r["model"] != "guard")
    acc, loss = run.acc - branch.acc, run.loss - branch.loss
    row.update(
        credit_acc=acc,
        credit_loss=loss,
        credit_note=f"run − branch on {split} after epoch {epoch} (branch: "
        f"accuracy {branch.acc:.2f}%, loss {branch.loss:.4g})",
    )
    if journal is not None:
        journal.append({"epoch": epoch, "credit": {"decision": decision, "credit_acc": acc, "credit_loss": loss}})
    with tracking.writing():
        tracking.write_table(advisor.calls, TABLE)
        mlflow.log_metrics({"credit_acc": acc, "credit_loss": loss}, step=decision)
    print(
        f"  credit of the decision after epoch {decision} (lr {row['applied_lr']:.4g} instead of "
        f"{row['scheduler_lr']:.4g}), on {split} after epoch {epoch}: {acc:+.2f} points, loss {loss:+.4g}",
        flush=True,
    )


def rollback(advisor, exchange_epoch, epoch, lr, loss, previous, scheduler_lr, journal=None):
    """guard=rollback undid epoch `epoch` (trained at the advisor's `lr`): a note under its exchange in the calls
    table (model "guard"; replay skips it) and the metric advisor_rollback."""
    reason = (
        f"rolled back: epoch {epoch} at lr {lr:g} ended with training loss {loss:.4g} (limit "
        f"{advisor.cfg.guard_factor:g} x {previous:.4g}); trained again at the scheduler's lr {scheduler_lr:g}"
    )
    row = {
        "epoch": exchange_epoch,
        "parsed_lr": None,
        "scheduler_lr": scheduler_lr,
        "applied_lr": scheduler_lr,
        "accepted": False,
        "changed": False,
        "reason": reason,
        "model": "guard",
    }
    if journal is not None:
        journal.append({"epoch": epoch, "rollback": row})
    advisor.calls.append(row)
    with tracking.writing():
        tracking.write_table(advisor.calls, TABLE)
        mlflow.log_metric("advisor_rollback", 1.0, step=epoch)
    print(f"  guard: {reason}", flush=True)
