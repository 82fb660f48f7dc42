"""Who answers the advisor's question: one function per provider, each `make(cfg) -> (ask, info)`, side by side.

An asker is `ask(epoch, prompt, state) -> dict`: the reply text and what is known about the call (model,
model_version, response_format, attempts, latency_s, retry_wait_s, token counts, finish_reason), or `error`
(one line) and `error_body` (everything the server said) when there is no reply. `state` holds the
scheduler's LR and the recent losses, for the controls that answer without an LLM. `info` says which model
answers and what the run should keep about the provider (artifact path -> JSON). advisor.py turns the reply
into an LR and records the exchange. The LLM servers are gemini.py and compatible.py (any OpenAI-compatible one),
behind one retry layer (retries.py); here are the answers made without one.
"""

import json
import random
import warnings

from lradvisor.arms import flag
from lradvisor.errors import UsageError
from lradvisor.llm import prompt as P
from lradvisor.llm.compatible import openai_asker
from lradvisor.llm.gemini import gemini_asker
from lradvisor.llm.retries import one_line

# ----------------------------------------------------------------------------------------------------------
# Null controls: answers without an LLM, in the words an LLM would use, through the same parser and records


def _answer(cfg, lr, why):
    if cfg.parser == "json":
        return json.dumps({"learning_rate": lr, "reasoning": why})
    return f"Suggested LR: {lr!r}\n\n{why}"


def random_asker(cfg, llm=None):
    """Does the LLM beat *any* perturbation of the LR? s * 10^u, u uniform in [-1, 1], seeded by the run's seed."""
    rng = random.Random(cfg.seed)

    def ask(epoch, text, state):
        u = rng.uniform(-1, 1)
        lr = state["scheduler_lr"] * 10**u
        return {
            "model": "random",
            "attempts": 1,
            "latency_s": 0.0,
            "retry_wait_s": 0.0,
            "finish_reason": "STOP",
            "reply": _answer(cfg, lr, f"random control: the scheduler's LR times 10^{u:.3f}"),
        }

    return ask, {"model": "random", "records": {}}


def textbook_asker(cfg, llm=None):
    """Does the LLM beat the rule its replies recite? Loss trend not "decreasing": LR / 10, else keep it."""

    def ask(epoch, text, state):
        trend = P.overall_trend(state["losses"])
        s = state["scheduler_lr"]
        lr, why = (
            (s, "the loss is decreasing: keep the learning rate")
            if trend == "decreasing"
            else (s / 10, f"the loss is {trend}: reduce the learning rate by a factor of 10")
        )
        return {
            "model": "textbook",
            "attempts": 1,
            "latency_s": 0.0,
            "retry_wait_s": 0.0,
            "finish_reason": "STOP",
            "reply": _answer(cfg, lr, why),
        }

    return ask, {"model": "textbook", "records": {}}


# ----------------------------------------------------------------------------------------------------------
# Replay: answer from a recorded run, no network


def replay_asker(cfg, llm=None):
    """Each recorded exchange's reply at the epoch it was asked. Under advice async / async_step the record also says
    where the reply was applied (applied_step; empty: never), so a replay applies it exactly there."""
    import mlflow

    from lradvisor.tracking import TABLE

    run_id = cfg.replay_run_id
    if run_id in ("", "none"):
        raise UsageError(
            f"{flag('advisor', 'replay')} needs {flag('replay_run_id', 'RUN_ID')} of a run that logged {TABLE}"
        )
    try:
        client = mlflow.MlflowClient()
        source = client.get_run(run_id)
        table = client.load_table(source.info.experiment_id, TABLE, run_ids=[run_id])
    except Exception as e:
        raise UsageError(
            f"cannot read {TABLE} of run {run_id!r} for replay ({type(e).__name__}: {one_line(e)}); "
            "give the id of a finished LLM-arm run on this tracking server"
        ) from None
    advice = source.data.params.get("advice", "sync")  # runs from before the parameter asked in step
    if advice != cfg.advice:
        raise UsageError(
            f"run {run_id} was trained with advice {advice}: replay it with {flag('advice', advice)}, "
            "so that each reply is applied where it was"
        )
    # The first row of each epoch is the exchange; a guard's rollback note comes later under the same epoch.
    recorded = {}
    for r in table.to_dict("records"):
        if r.get("model") != "guard":
            recorded.setdefault(int(r["epoch"]), r)
    mismatched = []

    def ask(epoch, text, state=None):
        rec = recorded.get(epoch)
        if rec is None:
            return {"model": "replay", "attempts": 0, "error": f"replay: run {run_id} has no exchange at epoch {epoch}"}
        if rec["prompt"] != text:  # the training diverged from the recorded run: say so, don't hide it
            mismatched.append(epoch)
            warnings.warn(f"replay: the prompt at epoch {epoch} differs from the one recorded in run {run_id}")
            mlflow.set_tag("replay_prompt_mismatch", ",".join(map(str, mismatched)))
        out = {
            "model": rec["model"],
            "model_version": rec.get("model_version"),
            "attempts": 0,
            "latency_s": 0.0,
            "retry_wait_s": 0.0,
            "finish_reason": rec.get("finish_reason") or "",
            "response_format": rec.get("response_format"),
        }
        if cfg.advice != "sync":  # where the live run applied it (None: it never was)
            step = rec.get("applied_step")
            out["arrives_step"] = int(step) if step is not None and step == step else None
        if not isinstance(rec.get("reply"), str):  # a recorded failure (no reply at all) replays as one
            out["error"] = "replay: " + str(rec.get("reason"))
        else:
            out["reply"] = rec["reply"]
        return out

    first = recorded[min(recorded)]["model"] if recorded else "replay"
    return ask, {"model": first, "records": {}}


# Who answers, by the `advisor` parameter: a new provider is one function of cfg returning (ask, info).
ASKERS = {
    "gemini": gemini_asker,
    "openai": openai_asker,
    "random": random_asker,
    "textbook": textbook_asker,
    "replay": replay_asker,
}
