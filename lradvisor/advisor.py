"""The advisor: ask (askers.py) for the next LR after an epoch, and record every exchange.

`consult` (advice sync, the published protocol) builds the prompt (prompt.py, or the run's template), asks and
waits, turns the reply into the next epoch's LR by the published rule (`decide`), and logs the exchange to MLflow
(`answer`): prompt and reply as text artifacts, a row of advisor/calls.json, two metrics and a trace span.
Under advice async / async_step a `Pending` exchange is asked in the background while training goes on; train.py
applies its reply where it lands and records it through the same `answer`, with the epoch and step it was applied
at. With credit on, `record_credit` later fills in the row of a decision what it was worth against its
counterfactual branch (train.py trains the branch).
"""

import threading
import time

import mlflow

from lradvisor import models
from lradvisor import prompt as P
from lradvisor import tracking
from lradvisor.arms import UsageError, check_id
from lradvisor.askers import ASKERS, LLMS
from lradvisor.tracking import TABLE


class AdvisorError(Exception):
    """An exchange failed and on_advisor_error=fail asked for the run to stop."""


def make_asker(args, spec):
    """An asker is `ask(epoch, prompt, state) -> dict` (state: the scheduler's LR and the recent losses, for the
    controls, which answer without an LLM). None for arms that never ask. Also loads and checks the prompt
    template into spec (load_template), and puts there which model answers and what the run keeps about it."""
    spec["model"], spec["records"], spec["calls"], spec["llm"] = "none", {}, [], None  # calls: calls.json's rows
    spec["advice"] = args.advice
    if not spec["every"]:
        return None
    load_template(args, spec)
    if spec["advisor"] in LLMS:  # a model from the models file (or provider:model) brings its provider
        spec["llm"] = models.pick(args.llm_model, args.models, args.advisor, args.arm)
        spec["advisor"] = spec["llm"]["provider"] if spec["llm"] else spec["advisor"]
    ask, info = ASKERS[spec["advisor"]](args, spec["llm"])
    spec["model"], spec["records"] = info["model"], info["records"]
    if spec["llm"]:  # which entry answered, and at what prices: the run's cost was computed from these
        spec["records"]["advisor/model.json"] = models.public(spec["llm"])
    return ask


def load_template(args, spec):
    """Fill spec["template"] from `prompt`: the built-in published family, a text file, or
    prompts:/NAME/VERSION or prompts:/NAME@ALIAS from the MLflow Prompt Registry. Checked before training."""
    spec["template"] = spec["prompt_version"] = None
    if not spec["every"]:
        return spec
    if args.prompt in ("", "published"):
        spec["template"] = P.builtin_template(spec["signals"], args.parser == "json", split_of(args))
        return spec
    if args.prompt.startswith("prompts:/"):
        import mlflow.genai
        try:
            version = mlflow.genai.load_prompt(args.prompt)
        except Exception as e:
            raise UsageError(f"cannot load prompt {args.prompt!r} from the registry at {mlflow.get_tracking_uri()} "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); register it first, "
                             "e.g. `lradvisor prompts register`") from None
        if not isinstance(version.template, str):
            raise UsageError(f"prompt {args.prompt!r} is a chat template; use a text prompt")
        spec["template"], spec["prompt_version"] = version.template, version
    else:
        try:
            with open(args.prompt, encoding="utf-8") as f:
                spec["template"] = f.read()
        except OSError as e:
            raise UsageError(f"cannot read prompt file {args.prompt!r} ({e.strerror}); give a text file, "
                             "prompts:/NAME/VERSION, prompts:/NAME@ALIAS or published") from None
        except UnicodeDecodeError as e:
            raise UsageError(f"prompt file {args.prompt!r} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                             "save it as UTF-8") from None
        if "\0" in spec["template"]:
            raise UsageError(f"prompt file {args.prompt!r} holds NUL bytes: it is not a text file") from None
    P.check_template(spec["template"], f"prompt {args.prompt}")
    return spec


def split_of(args):
    """Where the decisions' held-out numbers (per-class accuracy, credit) come from."""
    return "validation" if args.holdout > 0 else "test"


def saw_test(args, spec):
    """1 when the run's decisions read test-set numbers: an advisor that reads the prompt (an LLM, or replayed
    LLM replies), a prompt with per-class accuracy, and no holdout. The controls read only the LR and the
    training losses; a schedule alone reads the training loss (plateau: validation loss with a holdout)."""
    if not spec["every"] or args.holdout > 0 or spec["advisor"] in ("random", "textbook"):
        return 0
    return int(bool(P.PER_CLASS & set(P.PLACEHOLDER.findall(spec["template"]))))


def prepare_run(args, spec):
    if not spec["every"]:
        return
    # What the run's prompts were made from, next to them; and MLflow's own link from the prompt version.
    mlflow.log_text(spec["template"], "advisor/prompt_template.txt")
    if spec.get("prompt_version") is not None:
        mlflow.MlflowClient().link_prompt_version_to_run(mlflow.active_run().info.run_id, spec["prompt_version"])
    for path, record in spec.get("records", {}).items():  # e.g. the models an OpenAI-compatible server lists
        mlflow.log_dict(record, path)
    # Traces would switch the experiment page to the GenAI layout; keep it on the training-runs table.
    exp_id = mlflow.active_run().info.experiment_id
    tracking.set_experiment_tag_once(exp_id, "mlflow.experimentKind", "custom_model_development")
    if spec["advisor"] == "replay":
        mlflow.set_tag("replay_of", args.replay_run_id)


# ----------------------------------------------------------------------------------------------------------
# One exchange: ask, parse, decide, record

def question(args, spec, epoch, history, scheduler_lr):
    """The prompt after `epoch`, and what the controls read instead of it."""
    text = P.build_prompt(spec["signals"], history, scheduler_lr, args.window, template=spec["template"],
                          epochs=args.epochs)
    return text, {"scheduler_lr": scheduler_lr, "losses": history["train_loss"][-args.window:]}


def decide(args, got, scheduler_lr):
    """(proposed, applied, accepted, reason): the reply parsed and the published rule applied against the
    scheduler's LR of the moment it is applied."""
    if "error" in got:
        return None, scheduler_lr, False, got["error"]
    proposed, why = P.PARSERS[args.parser](got["reply"])
    applied, accepted, reason = P.decide(proposed, scheduler_lr, args.max_factor)
    if proposed is None:
        reason = why if got["reply"] else f"no reply text (finish_reason {got.get('finish_reason') or 'none'})"
    if str(got.get("finish_reason")).lower() in ("length", "max_tokens"):
        reason += "; reply cut at llm_max_tokens" if args.llm_max_tokens else "; reply cut by the server's limit"
    return proposed, applied, accepted, reason


def consult(ask, args, spec, epoch, history, scheduler_lr, journal=None, step=0):
    """advice sync: ask after `epoch` and wait. Returns the LR for the next epoch and the exchange's row of the
    calls table, after logging it (the row goes to `journal` first, so that it survives a tracking server that
    goes away meanwhile). `step`: the global batch number of the epoch's last batch."""
    text, state = question(args, spec, epoch, history, scheduler_lr)
    sent = time.time_ns()
    got = ask(epoch, text, state)
    return answer(args, spec, epoch, text, got, scheduler_lr, decide(args, got, scheduler_lr), history, journal,
                  (epoch + 1, step + 1), (sent, time.time_ns()))


class Pending:
    """An exchange asked after `epoch` in the background (advice async / async_step): training goes on at the
    schedule's LR, and train.py applies the reply at the first epoch boundary (async) or batch (async_step) after
    it arrives. An LLM is asked on a daemon thread: Ctrl-C or the run's end never waits for it. The controls and
    a replay answer without a network, at once; a replay's reply lands where the recorded run applied it."""

    def __init__(self, ask, args, spec, epoch, history, scheduler_lr):
        self.epoch, self.scheduler_lr = epoch, scheduler_lr
        self.text, state = question(args, spec, epoch, history, scheduler_lr)
        self.model, self.got, self.times = spec["model"], None, [time.time_ns(), None]
        self._done = threading.Event()
        if spec["advisor"] in LLMS:
            threading.Thread(target=self._ask, args=(ask, state), daemon=True, name=f"advisor-{epoch}").start()
        else:
            self._ask(ask, state)

    def _ask(self, ask, state):
        try:
            got = ask(self.epoch, self.text, state)
        except Exception as e:  # a bug would otherwise die with the thread, unseen: record it as the exchange
            got = {"model": self.model, "attempts": 0, "error": f"{type(e).__name__}: {e}"}
        self.times[1] = time.time_ns()
        self.got = got
        self._done.set()

    def ready(self, step):
        """Whether the reply may be applied from global batch `step` on."""
        if self._done.is_set() and "arrives_step" in self.got:  # a replay: exactly where the recorded run applied it
            return self.got["arrives_step"] is not None and step >= self.got["arrives_step"]
        return self._done.is_set()

    def unapplied(self, args, spec, history, epoch, journal=None):
        """Record the exchange as never applied: training ended (after `epoch`) with it in flight, or it arrived
        during the last epoch it could have changed."""
        arrived = self.ready(float("inf"))
        got = self.got if arrived else {"model": self.model}  # answer() drops a replay's arrives_step
        proposed = decide(args, got, self.scheduler_lr)[0] if arrived else None
        reason = (f"not applied: arrived after the last epoch boundary it could change (training ended after epoch "
                  f"{epoch})" if arrived else f"not applied: still in flight when training ended after epoch {epoch}; "
                  "not waited for")
        return answer(args, spec, self.epoch, self.text, got, self.scheduler_lr, (proposed, None, False, reason),
                      history, journal, None, (self.times[0], self.times[1] or time.time_ns()))[1]


def answer(args, spec, epoch, text, got, scheduler_lr, decision, history, journal, applied_at, times):
    """Record an exchange asked after `epoch` whose decision (decide) was applied from `applied_at` = (epoch,
    global batch) on, or never (None); `times` = (sent, arrived) in ns. Returns (the LR applied, the row)."""
    proposed, applied, accepted, reason = decision
    got = {k: v for k, v in got.items() if k != "arrives_step"}
    got["cost_usd"] = models.cost_usd(spec["llm"], got)
    changed = applied is not None and not P.unchanged(applied, scheduler_lr)
    # The trace list shows span names: say which run and epoch each exchange belongs to; its time is the request's.
    span = mlflow.start_span_no_context(name=f"{args.arm} s{args.seed} epoch {epoch}", span_type="LLM",
                                        start_time_ns=times[0],
                                        inputs={"arm": args.arm, "seed": args.seed, "epoch": epoch,
                                                "model": spec["model"], "prompt": text})
    span.end(outputs={"parsed_lr": proposed, "applied_lr": applied, "accepted": accepted, "changed": changed,
                      "reason": reason, "applied_epoch": applied_at and applied_at[0],
                      **{k: v for k, v in got.items() if k not in ("model", "error_body")}}, end_time_ns=times[1])
    credit = {}
    if args.credit_epochs:  # which decisions get a counterfactual branch (train.py trains it), and why not
        # It starts where the decision is applied: after `epoch` under sync, where the reply landed under async.
        k = min(args.credit_epochs, args.epochs - applied_at[0] + 1) if applied_at and accepted and changed else 0
        credit = {"credit_acc": None, "credit_loss": None, "credit_epochs": k,
                  "credit_note": f"pending: against {k} epoch(s) at the scheduler's lr {scheduler_lr:g}" if k else
                  "no branch: the scheduler's LR was applied" if applied_at else "no branch: never applied"}
    row = _record(spec, epoch, applied_at, text, got, proposed, scheduler_lr, applied, accepted, changed, reason,
                  credit, journal)
    history.setdefault("proposals", []).append((epoch, proposed, accepted))  # what the feedback signal shows
    if "error" in got and args.on_advisor_error == "fail" and spec["advisor"] in LLMS:
        raise AdvisorError(f"{spec['advisor']} exchange after epoch {epoch} failed ({reason}) and on_advisor_error is fail")
    if applied_at is None:
        outcome = reason
    elif args.advice == "sync":
        outcome = f"next lr {applied:.4g} ({reason})"
    else:
        outcome = f"lr {applied:.4g} from epoch {applied_at[0]} (step {applied_at[1]}) ({reason})"
    print(f"  advisor after epoch {epoch}: proposed {proposed if proposed is not None else '-'}, {outcome}", flush=True)
    return applied, row


def _record(spec, epoch, applied_at, text, got, proposed, scheduler_lr, applied, accepted, changed, reason, credit,
            journal=None):
    # The decision first and the long texts last: the UI's table shows the first columns without scrolling.
    # applied_epoch / applied_step: the first epoch and global batch trained at the decision (empty: never applied).
    row = {"epoch": epoch, "applied_epoch": applied_at and applied_at[0], "applied_step": applied_at and applied_at[1],
           "parsed_lr": proposed, "scheduler_lr": scheduler_lr, "applied_lr": applied,
           "accepted": accepted, "changed": changed, "reason": reason, **credit, "model": got.get("model"),
           "model_version": got.get("model_version"), "response_format": got.get("response_format"),
           "attempts": got.get("attempts"), "latency_s": got.get("latency_s"), "retry_wait_s": got.get("retry_wait_s"),
           "prompt_tokens": got.get("prompt_tokens"), "output_tokens": got.get("output_tokens"),
           "thought_tokens": got.get("thought_tokens"), "cost_usd": got.get("cost_usd"),
           "finish_reason": got.get("finish_reason"), "prompt": text, "reply": got.get("reply")}
    if journal is not None:
        journal.append({"epoch": epoch, "advisor": row})
    folder = f"advisor/epoch_{epoch:02d}"
    metrics = {"advisor_accepted": float(accepted)}
    if proposed is not None:
        metrics["advisor_proposed_lr"] = proposed
    spec["calls"].append(row)
    with tracking.writing():
        tracking.write_table(spec["calls"], TABLE)
        mlflow.log_text(text, f"{folder}/prompt.txt")  # the exact bytes sent and received
        mlflow.log_text(got.get("reply") or "", f"{folder}/reply.txt")
        # the same, readable in the UI's preview
        mlflow.log_text(exchange_page(row, spec.get("advice", "sync") == "sync"), f"{folder}/exchange.html")
        if got.get("error_body"):  # the server's whole answer; the table and the console keep one line of it
            mlflow.log_text(got["error_body"], f"{folder}/error.txt")
        mlflow.log_metrics(metrics, step=epoch)
    return row


PAGE = ("<!doctype html><meta charset='utf-8'><style>body{{font:13px/1.45 ui-monospace,monospace;margin:8px}}"
        "pre{{white-space:pre-wrap;overflow-wrap:anywhere;margin:0 0 12px}}h3{{font:600 13px sans-serif;margin:10px 0 4px}}"
        "</style><h3>epoch {epoch}: {decision}</h3><h3>prompt (sent)</h3><pre>{prompt}</pre>"
        "<h3>reply (received)</h3><pre>{reply}</pre>")


def exchange_page(row, sync=True):
    """The UI previews .txt files unwrapped and cut at its width, but renders HTML: the prompt and the reply as
    escaped, wrapping text (a reply's <think> tags show as written), under the decision."""
    import html
    lr = "-" if row["parsed_lr"] is None else f"{row['parsed_lr']:g}"
    if row["applied_lr"] is None:
        decision = f"parsed {lr}, not applied ({row['reason']})"
    elif sync:
        decision = f"parsed {lr}, next lr {row['applied_lr']:g} ({row['reason']})"
    else:
        decision = (f"parsed {lr}, lr {row['applied_lr']:g} from epoch {row['applied_epoch']}, step "
                    f"{row['applied_step']} ({row['reason']})")
    return PAGE.format(epoch=row["epoch"], decision=html.escape(decision), prompt=html.escape(row["prompt"]),
                       reply=html.escape(row["reply"]) if row["reply"] is not None else "(none)")


def record_credit(spec, decision, epoch, run, branch, split, journal=None):
    """The decision after epoch `decision` against its branch, both evaluated on `split` at `epoch`: run, branch
    are (loss, accuracy). Fills in the decision's row of calls.json, logs credit_acc and credit_loss at step =
    the decision's epoch, and says it on the console."""
    row = next(r for r in spec["calls"] if r["epoch"] == decision and r["model"] != "guard")
    acc, loss = run[1] - branch[1], run[0] - branch[0]
    row.update(credit_acc=acc, credit_loss=loss,
               credit_note=f"run − branch on {split} after epoch {epoch} (branch: accuracy {branch[1]:.2f}%, loss {branch[0]:.4g})")
    if journal is not None:
        journal.append({"epoch": epoch, "credit": {"decision": decision, "credit_acc": acc, "credit_loss": loss}})
    with tracking.writing():
        tracking.write_table(spec["calls"], TABLE)
        mlflow.log_metrics({"credit_acc": acc, "credit_loss": loss}, step=decision)
    print(f"  credit of the decision after epoch {decision} (lr {row['applied_lr']:.4g} instead of "
          f"{row['scheduler_lr']:.4g}), on {split} after epoch {epoch}: {acc:+.2f} points, loss {loss:+.4g}", flush=True)


def record_rollback(spec, exchange_epoch, epoch, lr, loss, previous, scheduler_lr, factor, journal=None):
    """guard=rollback undid epoch `epoch` (trained at the advisor's `lr`): a note under its exchange in the calls
    table (model "guard"; replay skips it) and the metric advisor_rollback."""
    reason = (f"rolled back: epoch {epoch} at lr {lr:g} ended with training loss {loss:.4g} (limit {factor:g} x "
              f"{previous:.4g}); trained again at the scheduler's lr {scheduler_lr:g}")
    row = {"epoch": exchange_epoch, "parsed_lr": None, "scheduler_lr": scheduler_lr, "applied_lr": scheduler_lr,
           "accepted": False, "changed": False, "reason": reason, "model": "guard"}
    if journal is not None:
        journal.append({"epoch": epoch, "rollback": row})
    spec["calls"].append(row)
    with tracking.writing():
        tracking.write_table(spec["calls"], TABLE)
        mlflow.log_metric("advisor_rollback", 1.0, step=epoch)
    print(f"  guard: {reason}", flush=True)


def register_builtin(prefix):
    """Register the published prompt family in the MLflow Prompt Registry: one prompt per LLM arm's signals,
    NAME-<arm>, a new version each time; each renders exactly the built-in prompt. Returns [(name, version)]."""
    import mlflow.genai
    from lradvisor.arms import ARMS
    check_id(prefix, "name")
    out = []
    for arm in ("losses", "lr_history", "grad_norms", "per_class", "feedback"):
        template = P.builtin_template(ARMS[arm]["signals"])
        version = mlflow.genai.register_prompt(f"{prefix}-{arm}", template, commit_message=f"lradvisor built-in, arm {arm}",
                                               tags={"source": "lradvisor"})
        out.append((version.name, version.version))
    return out
