"""The advisor: ask (askers.py) for the next LR after an epoch, and record every exchange.

`consult` builds the prompt (prompt.py, or the run's template), asks, turns the reply into the next epoch's
LR by the published rule, and logs the exchange to MLflow: prompt and reply as text artifacts, a row of
advisor/calls.json, two metrics and a trace span. With credit on, `record_credit` later fills in the row of
a decision what it was worth against its counterfactual branch (train.py trains the branch).
"""


import mlflow

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
    spec["model"], spec["records"], spec["calls"] = "none", {}, []  # calls: the rows of calls.json so far
    if not spec["every"]:
        return None
    load_template(args, spec)
    ask, info = ASKERS[spec["advisor"]](args)
    spec["model"], spec["records"] = info["model"], info["records"]
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

def consult(ask, args, spec, epoch, history, scheduler_lr, journal=None):
    """Return the LR for the next epoch and the exchange's row of the calls table, after logging it (the
    row goes to `journal` first, so that it survives a tracking server that goes away meanwhile)."""
    text = P.build_prompt(spec["signals"], history, scheduler_lr, args.window, template=spec["template"],
                          epochs=args.epochs)
    state = {"scheduler_lr": scheduler_lr, "losses": history["train_loss"][-args.window:]}
    model = spec["model"]
    # The trace list shows span names: say which run and epoch each exchange belongs to.
    with mlflow.start_span(name=f"{args.arm} s{args.seed} epoch {epoch}", span_type="LLM") as span:
        span.set_inputs({"arm": args.arm, "seed": args.seed, "epoch": epoch, "model": model, "prompt": text})
        got = ask(epoch, text, state)
        if "error" in got:
            proposed, applied, accepted, reason = None, scheduler_lr, False, got["error"]
        else:
            proposed, why = P.PARSERS[args.parser](got["reply"])
            applied, accepted, reason = P.decide(proposed, scheduler_lr, args.max_factor)
            if proposed is None:
                reason = why if got["reply"] else f"no reply text (finish_reason {got.get('finish_reason') or 'none'})"
            if str(got.get("finish_reason")).lower() in ("length", "max_tokens"):
                reason += "; reply cut at llm_max_tokens" if args.llm_max_tokens else "; reply cut by the server's limit"
        changed = not P.unchanged(applied, scheduler_lr)
        span.set_outputs({"parsed_lr": proposed, "applied_lr": applied, "accepted": accepted, "changed": changed,
                          "reason": reason, **{k: v for k, v in got.items() if k not in ("model", "error_body")}})
    credit = {}
    if args.credit_epochs:  # which decisions get a counterfactual branch (train.py trains it), and why not
        k = min(args.credit_epochs, args.epochs - epoch) if accepted and changed else 0
        credit = {"credit_acc": None, "credit_loss": None, "credit_epochs": k,
                  "credit_note": f"pending: against {k} epoch(s) at the scheduler's lr {scheduler_lr:g}" if k else
                  "no branch: the scheduler's LR was applied"}
    row = _record(spec, epoch, text, got, proposed, scheduler_lr, applied, accepted, changed, reason, credit, journal)
    history.setdefault("proposals", []).append((epoch, proposed, accepted))  # what the feedback signal shows
    if "error" in got and args.on_advisor_error == "fail" and spec["advisor"] in LLMS:
        raise AdvisorError(f"{spec['advisor']} exchange after epoch {epoch} failed ({reason}) and on_advisor_error is fail")
    print(f"  advisor after epoch {epoch}: proposed {proposed if proposed is not None else '-'}, "
          f"next lr {applied:.4g} ({reason})", flush=True)
    return applied, row


def _record(spec, epoch, text, got, proposed, scheduler_lr, applied, accepted, changed, reason, credit, journal=None):
    # The decision first and the long texts last: the UI's table shows the first columns without scrolling.
    row = {"epoch": epoch, "parsed_lr": proposed, "scheduler_lr": scheduler_lr, "applied_lr": applied,
           "accepted": accepted, "changed": changed, "reason": reason, **credit, "model": got.get("model"),
           "model_version": got.get("model_version"), "response_format": got.get("response_format"),
           "attempts": got.get("attempts"), "latency_s": got.get("latency_s"), "retry_wait_s": got.get("retry_wait_s"),
           "prompt_tokens": got.get("prompt_tokens"), "output_tokens": got.get("output_tokens"),
           "thought_tokens": got.get("thought_tokens"), "finish_reason": got.get("finish_reason"), "prompt": text,
           "reply": got.get("reply")}
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
        mlflow.log_text(exchange_page(row), f"{folder}/exchange.html")  # the same, readable in the UI's preview
        if got.get("error_body"):  # the server's whole answer; the table and the console keep one line of it
            mlflow.log_text(got["error_body"], f"{folder}/error.txt")
        mlflow.log_metrics(metrics, step=epoch)
    return row


PAGE = ("<!doctype html><meta charset='utf-8'><style>body{{font:13px/1.45 ui-monospace,monospace;margin:8px}}"
        "pre{{white-space:pre-wrap;overflow-wrap:anywhere;margin:0 0 12px}}h3{{font:600 13px sans-serif;margin:10px 0 4px}}"
        "</style><h3>epoch {epoch}: {decision}</h3><h3>prompt (sent)</h3><pre>{prompt}</pre>"
        "<h3>reply (received)</h3><pre>{reply}</pre>")


def exchange_page(row):
    """The UI previews .txt files unwrapped and cut at its width, but renders HTML: the prompt and the reply as
    escaped, wrapping text (a reply's <think> tags show as written), under the decision."""
    import html
    lr = "-" if row["parsed_lr"] is None else f"{row['parsed_lr']:g}"
    decision = f"parsed {lr}, next lr {row['applied_lr']:g} ({row['reason']})"
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
