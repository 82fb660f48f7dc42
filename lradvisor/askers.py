"""Who answers the advisor's question: one function per provider, each `make(args) -> ask`, side by side.

An asker is `ask(epoch, prompt, state) -> dict`: the reply text and what is known about the call (model,
model_version, attempts, latency_s, token counts, finish_reason), or `error` when there is no reply. `state`
holds the scheduler's LR and the recent losses, for the controls that answer without an LLM. advisor.py
turns the reply into an LR and records the exchange. API keys are read by the SDKs from the environment and
never pass through here (the OpenAI path's placeholder for key-less local servers aside).
"""

import json
import os
import random
import time
import warnings

import mlflow
import tenacity

from lradvisor import prompt as P
from lradvisor.arms import UsageError, flag


# ----------------------------------------------------------------------------------------------------------
# The one retry layer of every LLM provider

def _call_with_retries(args, name, retryable, server_delay, describe, call):
    """call() under tenacity: retry what `retryable` says, with exponential backoff and jitter capped at
    llm_max_wait, but never sooner than the server asked (`server_delay(exc)` seconds). Returns (response, out)
    with out = {model, attempts, latency_s} and, when every attempt failed, (None, out + error)."""
    def wait(state):
        backoff = tenacity.wait_exponential_jitter(initial=1, max=args.llm_max_wait)(state)
        return max(backoff, server_delay(state.outcome.exception()))

    def log_retry(state):
        print(f"  {name}: {describe(state.outcome.exception())}; retry {state.attempt_number}/{args.llm_attempts - 1} "
              f"in {state.next_action.sleep:.1f}s", flush=True)

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(args.llm_attempts), wait=wait,
                                 retry=tenacity.retry_if_exception(retryable), before_sleep=log_retry, reraise=True)
    t0 = time.perf_counter()
    out, resp = {"model": args.llm_model, "attempts": 0}, None
    try:
        for attempt in retrying:
            with attempt:
                out["attempts"] = attempt.retry_state.attempt_number
                resp = call()
    except Exception as e:
        out["error"] = describe(e)
    out["latency_s"] = time.perf_counter() - t0
    return resp, out


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

    def ask(epoch, text, state=None):
        resp, out = _call_with_retries(args, "gemini", _retryable, _retry_delay, _describe,
                                       lambda: client.models.generate_content(model=args.llm_model, contents=text,
                                                                              config=config))
        if "error" in out:
            return out
        cand = resp.candidates[0] if resp.candidates else None
        parts = (cand.content.parts if cand and cand.content and cand.content.parts else None) or []
        usage, finish = resp.usage_metadata, cand.finish_reason if cand else None
        out.update(
            reply="".join(p.text for p in parts if p.text and not p.thought),
            model_version=resp.model_version, finish_reason=getattr(finish, "name", finish or ""),
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            thought_tokens=usage.thoughts_token_count if usage else None)
        return out

    return ask


# ----------------------------------------------------------------------------------------------------------
# Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, gateways) through the openai client

def _local(url):
    from urllib.parse import urlparse
    host = urlparse(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")


def _openai_retryable(exc):
    import openai
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError))


def _retry_after(exc):
    """Seconds from a Retry-After header (seconds or an HTTP date), else 0."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0


def _openai_describe(exc):
    import openai
    if isinstance(exc, openai.APIStatusError):
        return f"api error: {exc.status_code}: {exc.message}"
    return f"api error: {type(exc).__name__}: {exc}"


def openai_asker(args):
    import openai
    base = os.environ.get("OPENAI_BASE_URL", "")
    key = os.environ.get("OPENAI_API_KEY")
    if not key and not (base and _local(base)):
        raise UsageError(f"arm {args.arm!r} asks an OpenAI-compatible server at {base or 'api.openai.com'}, which needs "
                         "a key: export OPENAI_API_KEY (a local server at OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 "
                         f"needs none), or use {flag('advisor', 'replay')}")
    # The client's own retries are off: tenacity is the one retry layer, as for Gemini. Local servers take any
    # key; the placeholder never leaves this process except in the Authorization header to that server.
    client = openai.OpenAI(api_key=key or "not-needed", max_retries=0, timeout=args.llm_timeout)
    extra = {"temperature": args.temperature}
    if args.parser == "json":
        extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "learning_rate", "strict": True,
                                                                            "schema": P.JSON_SCHEMA}}

    def create(text):
        try:
            return client.chat.completions.create(model=args.llm_model, messages=[{"role": "user", "content": text}],
                                                  **extra)
        except openai.BadRequestError as e:
            if "response_format" not in extra or "response_format" not in str(e):
                raise
            # Many local servers do not do structured output: ask in plain text; the prompt still asks for JSON.
            warnings.warn(f"the server refused response_format ({e.status_code}); asking without it from now on")
            extra.pop("response_format")
            return create(text)

    def ask(epoch, text, state=None):
        resp, out = _call_with_retries(args, "openai", _openai_retryable, _retry_after, _openai_describe,
                                       lambda: create(text))
        if "error" in out:
            return out
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None)
        out.update(reply=(choice.message.content if choice and choice.message else None) or "",
                   model_version=resp.model, finish_reason=(choice.finish_reason if choice else "") or "",
                   prompt_tokens=usage.prompt_tokens if usage else None,
                   output_tokens=usage.completion_tokens if usage else None,
                   thought_tokens=getattr(details, "reasoning_tokens", None) if details else None)
        return out

    return ask


# ----------------------------------------------------------------------------------------------------------
# Null controls: answers without an LLM, in the words an LLM would use, through the same parser and records

def _answer(args, lr, why):
    if args.parser == "json":
        return json.dumps({"learning_rate": lr, "reasoning": why})
    return f"Suggested LR: {lr!r}\n\n{why}"


def random_asker(args):
    """Does the LLM beat *any* perturbation of the LR? s * 10^u, u uniform in [-1, 1], seeded by the run's seed."""
    rng = random.Random(args.seed)

    def ask(epoch, text, state):
        u = rng.uniform(-1, 1)
        lr = state["scheduler_lr"] * 10 ** u
        return {"model": "random", "attempts": 1, "latency_s": 0.0, "finish_reason": "STOP",
                "reply": _answer(args, lr, f"random control: the scheduler's LR times 10^{u:.3f}")}

    return ask


def textbook_asker(args):
    """Does the LLM beat the rule its replies recite? Loss trend not "decreasing": LR / 10, else keep it."""
    def ask(epoch, text, state):
        trend = P.overall_trend(state["losses"])
        s = state["scheduler_lr"]
        lr, why = (s, "the loss is decreasing: keep the learning rate") if trend == "decreasing" else \
            (s / 10, f"the loss is {trend}: reduce the learning rate by a factor of 10")
        return {"model": "textbook", "attempts": 1, "latency_s": 0.0, "finish_reason": "STOP",
                "reply": _answer(args, lr, why)}

    return ask


# ----------------------------------------------------------------------------------------------------------
# Replay: answer from a recorded run, no network

def replay_asker(args):
    from lradvisor.advisor import TABLE  # here: advisor.py imports this module
    run_id = args.replay_run_id
    if run_id in ("", "none"):
        raise UsageError(f"{flag('advisor', 'replay')} needs {flag('replay_run_id', 'RUN_ID')} of a run that logged {TABLE}")
    try:
        client = mlflow.MlflowClient()
        table = client.load_table(client.get_run(run_id).info.experiment_id, TABLE, run_ids=[run_id])
    except Exception as e:
        raise UsageError(f"cannot read {TABLE} of run {run_id!r} for replay ({type(e).__name__}: {e}); "
                         "give the id of a finished LLM-arm run on this tracking server") from None
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
        out = {"model": rec["model"], "model_version": rec.get("model_version"), "attempts": 0, "latency_s": 0.0,
               "finish_reason": rec.get("finish_reason") or ""}
        if not isinstance(rec.get("reply"), str):  # a recorded failure (no reply at all) replays as one
            out["error"] = "replay: " + str(rec.get("reason"))
        else:
            out["reply"] = rec["reply"]
        return out

    return ask


# Who answers, by the `advisor` parameter: a new provider is one function of args returning an asker.
LLMS = ("gemini", "openai")
ASKERS = {"gemini": gemini_asker, "openai": openai_asker, "random": random_asker, "textbook": textbook_asker,
          "replay": replay_asker}
