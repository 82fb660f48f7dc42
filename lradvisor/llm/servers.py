"""LLM servers: Gemini through google-genai and any OpenAI-compatible server through the openai client, behind one
retry layer; each is `make(cfg) -> (ask, info)` as askers.py describes. Keys are read by the SDKs from the
environment and never pass through here (the OpenAI path's placeholder for key-less local servers aside).
"""

import dataclasses
import json
import os
import time
import warnings

import tenacity

from lradvisor.arms import flag
from lradvisor.errors import UsageError
from lradvisor.llm import prompt as P

GEMINI_MODEL = "gemini-3.5-flash"  # what llm_model=auto asks Gemini (the published gemini-2.5-flash is shut down)
# Gemini counts thinking tokens against maxOutputTokens, so a cap meant for the reply would starve the thinking:
# it is sent as llm_max_tokens + the thinking budget (this, Flash's largest, when the model picks its own).
GEMINI_MAX_THINKING = 24576


def one_line(text, limit=200):
    """The first non-empty line of a message (with the next one when it only announces it, as "1 validation
    error:" does), at most `limit` characters: what records and consoles show."""
    lines = [s.strip() for s in str(text).splitlines() if s.strip()]
    line = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
    return line if len(line) <= limit else line[:limit - 1] + "…"


# ----------------------------------------------------------------------------------------------------------
# The one retry layer of every LLM provider

def _call_with_retries(cfg, name, errors, call, model):
    """call() under tenacity: retry what errors["retryable"] says, with exponential backoff and jitter capped at
    llm_max_wait, never sooner than the server asked, and after a timeout no sooner than llm_timeout (a
    single-slot server goes on generating for a client that gave up; the next request would queue behind it).
    A server asking for more than llm_max_wait ends the exchange at once. Returns (response, out), out =
    {model, attempts, latency_s, retry_wait_s} plus error and error_body when every attempt failed."""
    waits, asked = [], {}

    def retry(exc):
        if not errors["retryable"](exc):
            return False
        asked["delay"] = errors["delay"](exc)
        return asked["delay"] <= cfg.llm_max_wait

    def wait(state):
        exc = state.outcome.exception()
        backoff = tenacity.wait_exponential_jitter(initial=1, max=cfg.llm_max_wait)(state)
        return max(backoff, errors["delay"](exc), cfg.llm_timeout if errors["timed_out"](exc) else 0.0)

    def log_retry(state):
        waits.append(state.next_action.sleep)
        print(f"  {name}: {errors['describe'](state.outcome.exception())}; retry {state.attempt_number}/"
              f"{cfg.llm_attempts - 1} in {state.next_action.sleep:.1f}s", flush=True)

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(cfg.llm_attempts), wait=wait,
                                 retry=tenacity.retry_if_exception(retry), before_sleep=log_retry, reraise=True)
    t0 = time.perf_counter()
    out, resp = {"model": model, "attempts": 0}, None
    try:
        for attempt in retrying:
            with attempt:
                out["attempts"] = attempt.retry_state.attempt_number
                resp = call()
    except Exception as e:
        out["error"] = errors["describe"](e)
        if asked.get("delay", 0) > cfg.llm_max_wait:
            out["error"] += f"; server asked to wait {asked['delay']:g} s > llm_max_wait {cfg.llm_max_wait:g} s"
        out["error_body"] = errors["body"](e)
    out["latency_s"] = time.perf_counter() - t0
    out["retry_wait_s"] = sum(waits)
    return resp, out


def _transport(exc, kind):
    """httpx / httpx2 (google-genai 3 and openai 3 use httpx2) transport errors: kind TransportError or
    TimeoutException."""
    return any(c.__module__.split(".")[0] in ("httpx", "httpx2") and c.__name__ == kind for c in type(exc).__mro__)


def _exc_text(exc):
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------------------
# Gemini through google-genai

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


def _gemini_retryable(exc):
    from google.genai import errors
    if isinstance(exc, errors.APIError):
        return exc.code in (500, 502, 503, 504) or (exc.code == 429 and not _per_day_quota(exc))
    return _transport(exc, "TransportError")


def _gemini_describe(exc):
    from google.genai import errors
    if isinstance(exc, errors.APIError):
        quota = " (per-day quota, not retried)" if exc.code == 429 and _per_day_quota(exc) else ""
        return one_line(f"api error: {exc.code} {exc.status}{quota}: {one_line(exc.message, 1000)}")
    return one_line(f"api error: {_exc_text(exc)}")


def _gemini_body(exc):
    details = getattr(exc, "details", None)
    return json.dumps(details, indent=1) if details is not None else _exc_text(exc)


GEMINI_ERRORS = {"retryable": _gemini_retryable, "delay": _retry_delay, "describe": _gemini_describe,
                 "body": _gemini_body, "timed_out": lambda e: _transport(e, "TimeoutException")}


def gemini_asker(cfg, llm=None):
    """`llm`: the models-file entry (models.py) naming the model, its base URL and its key's variable; None: the
    SDK's own environment (GOOGLE_GEMINI_BASE_URL, GOOGLE_API_KEY / GEMINI_API_KEY, Vertex AI) and llm_model."""
    from google import genai
    from google.genai import types
    vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")
    key_env = (llm or {}).get("key_env")
    if key_env and not os.environ.get(key_env):
        raise UsageError(f"model {llm['name']!r} reads its key from {key_env}, which is not set: export {key_env}, "
                         f"or use {flag('advisor', 'replay')}")
    if not key_env and not vertex and not (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
        raise UsageError(f"arm {cfg.arm!r} asks Gemini but no key is set: export GOOGLE_API_KEY or GEMINI_API_KEY "
                         f"(or GOOGLE_GENAI_USE_VERTEXAI=true for Vertex AI), or use {flag('advisor', 'replay')}")
    http = types.HttpOptions(timeout=int(cfg.llm_timeout * 1000), base_url=(llm or {}).get("base_url"))
    try:  # what is not given here (base URL, key, Vertex settings) comes from the SDK's environment
        client = genai.Client(http_options=http, **({"api_key": os.environ[key_env]} if key_env else {}))
    except Exception as e:
        raise UsageError(f"cannot set up the Gemini client: {one_line(e)}") from None
    if llm:
        cfg = dataclasses.replace(cfg, llm_model=llm["model"])
    model = GEMINI_MODEL if cfg.llm_model == "auto" else cfg.llm_model
    config = types.GenerateContentConfig(temperature=cfg.temperature)
    if cfg.thinking_budget >= 0:
        config.thinking_config = types.ThinkingConfig(thinking_budget=cfg.thinking_budget)
    if cfg.llm_max_tokens:
        thinking = cfg.thinking_budget if cfg.thinking_budget >= 0 else GEMINI_MAX_THINKING
        config.max_output_tokens = cfg.llm_max_tokens + thinking
    if cfg.parser == "json":
        config.response_mime_type = "application/json"
        config.response_json_schema = P.JSON_SCHEMA

    def ask(epoch, text, state=None):
        resp, out = _call_with_retries(cfg, "gemini", GEMINI_ERRORS,
                                       lambda: client.models.generate_content(model=model, contents=text, config=config),
                                       model)
        out["response_format"] = "json_schema" if cfg.parser == "json" else "text"
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

    return ask, {"model": model, "records": {}}


# ----------------------------------------------------------------------------------------------------------
# Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, gateways) through the openai client

def _local(url):
    from urllib.parse import urlparse
    host = urlparse(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")


def _public(url):
    """A base URL as it may be recorded: no user:password@, no query string (where keys sometimes hide)."""
    from urllib.parse import urlparse
    u = urlparse(url)
    return u._replace(netloc=u.hostname + (f":{u.port}" if u.port else "") if u.hostname else u.netloc,
                      query="", fragment="").geturl()


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
        body = exc.body
        error = body.get("error", body) if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return one_line(f"api error: {exc.status_code}{' ' + str(kind) if kind else ''}: "
                        f"{one_line(message or body or exc.message, 1000)}")
    return one_line(f"api error: {_exc_text(exc)}")


def _openai_body(exc):
    response = getattr(exc, "response", None)
    try:
        return response.text if response is not None else _exc_text(exc)
    except Exception:  # a streamed or closed response
        return _exc_text(exc)


OPENAI_ERRORS = {"retryable": _openai_retryable, "delay": _retry_after, "describe": _openai_describe,
                 "body": _openai_body, "timed_out": lambda e: type(e).__name__ == "APITimeoutError"}


def _server_models(client, where):
    """The ids the server lists under GET /v1/models, or why it lists none."""
    try:
        return {"base_url": where, "ids": sorted(m.id for m in client.models.list())}
    except Exception as e:
        return {"base_url": where, "ids": None, "error": _openai_describe(e)}


def _pick_model(cfg, models):
    """llm_model as given (with a warning when the server does not list it: permissive servers answer under
    any name), or for auto the one model the server serves."""
    ids, where = models["ids"], models["base_url"]
    shown = lambda: ", ".join(ids[:20]) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")  # noqa: E731
    if cfg.llm_model != "auto":
        if ids and cfg.llm_model not in ids:
            warnings.warn(f"the server at {where} does not list model {cfg.llm_model!r} (it lists: {shown()}); "
                          "it may answer under another model")
        return cfg.llm_model
    give = flag("llm_model", "NAME")
    if ids is None:
        raise UsageError(f"llm_model auto: cannot list the models of {where} ({models['error']}); start the server, "
                         f"or give {give}")
    if not ids:
        raise UsageError(f"llm_model auto: the server at {where} lists no model; give {give}")
    if len(ids) > 1:
        raise UsageError(f"llm_model auto: the server at {where} serves {len(ids)} models ({shown()}); "
                         f"pick one with {flag('llm_model', ids[0])}")
    print(f"llm_model auto: the server at {where} serves one model, {ids[0]}; asking it", flush=True)
    return ids[0]


def openai_asker(cfg, llm=None):
    """`llm`: the models-file entry (models.py); None: OPENAI_BASE_URL, OPENAI_API_KEY and llm_model."""
    import openai
    llm = llm or {}
    base = llm.get("base_url") or os.environ.get("OPENAI_BASE_URL", "")
    key_env = llm.get("key_env") or "OPENAI_API_KEY"
    key = os.environ.get(key_env)
    if not key and not (base and _local(base)):
        raise UsageError(f"arm {cfg.arm!r} asks an OpenAI-compatible server at {_public(base) if base else 'api.openai.com'}, "
                         f"which needs a key: export {key_env} (a local server at http://127.0.0.1:PORT/v1 needs none), "
                         f"or use {flag('advisor', 'replay')}")
    if llm:
        cfg = dataclasses.replace(cfg, llm_model=llm["model"])
    # The client's own retries are off: tenacity is the one retry layer, as for Gemini. Local servers take any
    # key; the placeholder never leaves this process except in the Authorization header to that server.
    client = openai.OpenAI(api_key=key or "not-needed", base_url=base or None, max_retries=0, timeout=cfg.llm_timeout)
    models = _server_models(client, _public(base or "https://api.openai.com/v1"))
    model = _pick_model(cfg, models)
    # Structured output in steps, as servers allow: OpenAI's json_schema; llama.cpp's and Ollama's json_object
    # with the schema beside it; plain text (the prompt still asks for JSON). What worked is kept for the run.
    forms = ["json_schema", "json_object", "text"] if cfg.parser == "json" else ["text"]
    now = {"form": 0, "cap": "max_tokens"}

    def create(text):
        form = forms[now["form"]]
        extra = {"temperature": cfg.temperature}
        if cfg.llm_max_tokens:
            extra[now["cap"]] = cfg.llm_max_tokens
        if form == "json_schema":
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "learning_rate", "strict": True, "schema": P.JSON_SCHEMA}}
        elif form == "json_object":
            extra["response_format"] = {"type": "json_object", "schema": P.JSON_SCHEMA}
        try:
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **extra)
        except openai.APIStatusError as e:
            said = _openai_body(e).lower()
            if form != "text" and e.status_code in (400, 422, 500) and ("response_format" in said or "json_schema" in said):
                now["form"] += 1
                warnings.warn(f"the server refused response_format {form} ({_openai_describe(e)}); asking with "
                              f"{forms[now['form']]} from now on")
                return create(text)
            if now["cap"] == "max_tokens" and e.status_code == 400 and "max_completion_tokens" in said:
                now["cap"] = "max_completion_tokens"  # OpenAI's reasoning models refuse the older name
                return create(text)
            raise

    def ask(epoch, text, state=None):
        resp, out = _call_with_retries(cfg, "openai", OPENAI_ERRORS, lambda: create(text), model)
        out["response_format"] = forms[now["form"]]
        if "error" in out:
            return out
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None)
        thought = getattr(details, "reasoning_tokens", None) if details else None
        # OpenAI's completion_tokens include the reasoning tokens; Gemini counts them apart. Recorded as Gemini
        # does (output = the reply's own), so that tokens and cost never count reasoning twice.
        out.update(reply=(choice.message.content if choice and choice.message else None) or "",
                   model_version=resp.model, finish_reason=(choice.finish_reason if choice else "") or "",
                   prompt_tokens=usage.prompt_tokens if usage else None,
                   output_tokens=usage.completion_tokens - (thought or 0) if usage and usage.completion_tokens is not None else None,
                   thought_tokens=thought)
        return out

    return ask, {"model": model, "records": {"advisor/server_models.json": models}}
