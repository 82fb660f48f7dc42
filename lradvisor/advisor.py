"""The LLM advisor: ask Gemini (or replay a recorded run) for the next LR, and record every exchange.

An asker is a plain function `ask(epoch, prompt) -> dict` returning the reply text and what is known about
the call; `consult` turns it into the next epoch's LR by the published rule (prompt.py) and logs the
exchange to MLflow: prompt and reply as text artifacts, a row of advisor/calls.json, two metrics and a
trace span. The API key is read by the SDK from the environment and never passes through this module.
"""

import os
import time
import warnings

import mlflow
import tenacity

from lradvisor import prompt as P
from lradvisor.arms import UsageError, flag

TABLE = "advisor/calls.json"


class AdvisorError(Exception):
    """An exchange failed and on_advisor_error=fail asked for the run to stop."""


def make_asker(args, spec):
    if not spec["every"]:
        return None
    if args.advisor == "replay":
        return replay_asker(args.replay_run_id)
    return gemini_asker(args)


def prepare_run(args, spec):
    if not spec["every"]:
        return
    # Traces would switch the experiment page to the GenAI layout; keep it on the training-runs table.
    exp_id = mlflow.active_run().info.experiment_id
    mlflow.MlflowClient().set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    if args.advisor == "replay":
        mlflow.set_tag("replay_of", args.replay_run_id)


# ----------------------------------------------------------------------------------------------------------
# Gemini through google-genai, with tenacity retries

def _error_details(exc):
    """The google.rpc detail objects of an API error body (RetryInfo, QuotaFailure, ...)."""
    body = getattr(exc, "details", None)
    body = body.get("error", body) if isinstance(body, dict) else {}
    return [d for d in body.get("details") or [] if isinstance(d, dict)]


def _retry_delay(exc):
    """Seconds the server asked us to wait (google.rpc.RetryInfo, e.g. "45.8s"), else 0."""
    for d in _error_details(exc):
        if d.get("@type", "").endswith("RetryInfo"):
            return float(str(d.get("retryDelay", "0s")).rstrip("s") or 0)
    return 0.0


def _per_day_quota(exc):
    # A QuotaFailure naming a per-day quota will not clear in minutes: retrying only burns the run's time.
    return any("PerDay" in str(v.get("quotaId", "")) for d in _error_details(exc)
               if d.get("@type", "").endswith("QuotaFailure") for v in d.get("violations") or [])


def _retryable(exc):
    from google.genai import errors
    if isinstance(exc, errors.APIError):
        return exc.code in (500, 502, 503, 504) or (exc.code == 429 and not _per_day_quota(exc))
    # Timeouts and connection failures surface as httpx / httpx2 transport errors (google-genai 3 uses httpx2).
    return any(c.__module__.split(".")[0] in ("httpx", "httpx2") and c.__name__ == "TransportError"
               for c in type(exc).__mro__)


def _describe(exc):
    from google.genai import errors
    if isinstance(exc, errors.APIError):
        quota = " (per-day quota, not retried)" if exc.code == 429 and _per_day_quota(exc) else ""
        return f"api error: {exc.code} {exc.status}{quota}: {exc.message}"
    return f"api error: {type(exc).__name__}: {exc}"


def gemini_asker(args):
    from google import genai
    from google.genai import types
    vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")
    if not vertex and not (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
        raise UsageError(f"arm {args.arm!r} asks Gemini but no key is set: export GOOGLE_API_KEY or GEMINI_API_KEY "
                         f"(or GOOGLE_GENAI_USE_VERTEXAI=true for Vertex AI), or use {flag('advisor', 'replay')}")
    try:  # base URL (GOOGLE_GEMINI_BASE_URL), key and Vertex settings all come from the SDK's environment
        client = genai.Client(http_options=types.HttpOptions(timeout=int(args.llm_timeout * 1000)))
    except Exception as e:
        raise UsageError(f"cannot set up the Gemini client: {e}") from None
    config = types.GenerateContentConfig(temperature=args.temperature)
    if args.thinking_budget >= 0:
        config.thinking_config = types.ThinkingConfig(thinking_budget=args.thinking_budget)
    if args.parser == "json":
        config.response_mime_type = "application/json"
        config.response_json_schema = P.JSON_SCHEMA

    def wait(state):  # exponential backoff with jitter, but never sooner than the server's RetryInfo
        backoff = tenacity.wait_exponential_jitter(initial=1, max=args.llm_max_wait)(state)
        return max(backoff, _retry_delay(state.outcome.exception()))

    def log_retry(state):
        print(f"  gemini: {_describe(state.outcome.exception())}; retry {state.attempt_number}/{args.llm_attempts - 1} "
              f"in {state.next_action.sleep:.1f}s", flush=True)

    def ask(epoch, text):
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(args.llm_attempts), wait=wait,
                                     retry=tenacity.retry_if_exception(_retryable), before_sleep=log_retry,
                                     reraise=True)
        t0 = time.perf_counter()
        out = {"model": args.llm_model, "attempts": 0}
        try:
            for attempt in retrying:
                with attempt:
                    out["attempts"] = attempt.retry_state.attempt_number
                    resp = client.models.generate_content(model=args.llm_model, contents=text, config=config)
        except Exception as e:
            out.update(error=_describe(e), latency_s=time.perf_counter() - t0)
            return out
        cand = resp.candidates[0] if resp.candidates else None
        parts = (cand.content.parts if cand and cand.content and cand.content.parts else None) or []
        usage, finish = resp.usage_metadata, cand.finish_reason if cand else None
        out.update(
            reply="".join(p.text for p in parts if p.text and not p.thought),
            model_version=resp.model_version, finish_reason=getattr(finish, "name", finish or ""),
            latency_s=time.perf_counter() - t0,
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            thought_tokens=usage.thoughts_token_count if usage else None)
        return out

    return ask


# ----------------------------------------------------------------------------------------------------------
# Replay: answer from a recorded run, no network

def replay_asker(run_id):
    if run_id in ("", "none"):
        raise UsageError(f"{flag('advisor', 'replay')} needs {flag('replay_run_id', 'RUN_ID')} of a run that logged {TABLE}")
    try:
        client = mlflow.MlflowClient()
        table = client.load_table(client.get_run(run_id).info.experiment_id, TABLE, run_ids=[run_id])
    except Exception as e:
        raise UsageError(f"cannot read {TABLE} of run {run_id!r} for replay ({type(e).__name__}: {e}); "
                         "give the id of a finished LLM-arm run on this tracking server") from None
    recorded = {int(r["epoch"]): r for r in table.to_dict("records")}
    mismatched = []

    def ask(epoch, text):
        rec = recorded.get(epoch)
        if rec is None:
            return {"model": "replay", "attempts": 0, "error": f"replay: run {run_id} has no exchange at epoch {epoch}"}
        if rec["prompt"] != text:  # the training diverged from the recorded run: say so, don't hide it
            mismatched.append(epoch)
            warnings.warn(f"replay: the prompt at epoch {epoch} differs from the one recorded in run {run_id}")
            mlflow.set_tag("replay_prompt_mismatch", ",".join(map(str, mismatched)))
        out = {"model": rec["model"], "model_version": rec.get("model_version"), "attempts": 0, "latency_s": 0.0,
               "finish_reason": rec.get("finish_reason") or ""}
        if not isinstance(rec.get("reply"), str):  # a recorded failure (no reply at all) replays as one
            out["error"] = "replay: " + str(rec.get("reason"))
        else:
            out["reply"] = rec["reply"]
        return out

    return ask


# ----------------------------------------------------------------------------------------------------------
# One exchange: ask, parse, decide, record

def consult(ask, args, spec, epoch, history, scheduler_lr, journal=None):
    """Return the LR for the next epoch and the exchange's row of the calls table, after logging it (the
    row goes to `journal` first, so that it survives a tracking server that goes away meanwhile)."""
    text = P.build_prompt(spec["signals"], history, scheduler_lr, args.window, json_reply=args.parser == "json")
    # The trace list shows span names: say which run and epoch each exchange belongs to.
    with mlflow.start_span(name=f"{args.arm} s{args.seed} epoch {epoch}", span_type="LLM") as span:
        span.set_inputs({"arm": args.arm, "seed": args.seed, "epoch": epoch, "model": args.llm_model, "prompt": text})
        got = ask(epoch, text)
        if "error" in got:
            proposed, applied, accepted, reason = None, scheduler_lr, False, got["error"]
        else:
            proposed, why = P.PARSERS[args.parser](got["reply"])
            applied, accepted, reason = P.decide(proposed, scheduler_lr, args.max_factor)
            if proposed is None:
                reason = why if got["reply"] else f"no reply text (finish_reason {got.get('finish_reason') or 'none'})"
        span.set_outputs({"parsed_lr": proposed, "applied_lr": applied, "accepted": accepted, "reason": reason,
                          **{k: v for k, v in got.items() if k != "model"}})
    row = _record(epoch, text, got, proposed, scheduler_lr, applied, accepted, reason, journal)
    if "error" in got and args.on_advisor_error == "fail" and args.advisor == "gemini":
        raise AdvisorError(f"Gemini exchange after epoch {epoch} failed ({reason}) and on_advisor_error is fail")
    print(f"  advisor after epoch {epoch}: proposed {proposed if proposed is not None else '-'}, "
          f"next lr {applied:.4g} ({reason})", flush=True)
    return applied, row


def _record(epoch, text, got, proposed, scheduler_lr, applied, accepted, reason, journal=None):
    # The decision first and the long texts last: the UI's table shows the first columns without scrolling.
    row = {"epoch": epoch, "parsed_lr": proposed, "scheduler_lr": scheduler_lr, "applied_lr": applied,
           "accepted": accepted, "reason": reason, "model": got.get("model"), "model_version": got.get("model_version"),
           "attempts": got.get("attempts"), "latency_s": got.get("latency_s"), "prompt_tokens": got.get("prompt_tokens"),
           "output_tokens": got.get("output_tokens"), "thought_tokens": got.get("thought_tokens"),
           "finish_reason": got.get("finish_reason"), "prompt": text, "reply": got.get("reply")}
    if journal is not None:
        journal.append({"epoch": epoch, "advisor": row})
    mlflow.log_table({k: [v] for k, v in row.items()}, artifact_file=TABLE)
    folder = f"advisor/epoch_{epoch:02d}"
    mlflow.log_text(text, f"{folder}/prompt.txt")
    mlflow.log_text(got.get("reply") or "", f"{folder}/reply.txt")
    metrics = {"advisor_accepted": float(accepted)}
    if proposed is not None:
        metrics["advisor_proposed_lr"] = proposed
    mlflow.log_metrics(metrics, step=epoch)
    return row
