"""Gemini through google-genai, behind the one retry layer (llm/retries.py): `gemini_asker(cfg, llm) -> (ask, info)` as
askers.py describes. The key is read by the SDK from the environment (or the variable a models-file entry names) and
never passes through here."""

import dataclasses
import json
import os

from lradvisor.arms import flag
from lradvisor.errors import UsageError
from lradvisor.llm import prompt as P
from lradvisor.llm.retries import call_with_retries, exc_text, one_line, transport

GEMINI_MODEL = "gemini-3.5-flash"  # what llm_model=auto asks Gemini (the published gemini-2.5-flash is shut down)
# Gemini counts thinking tokens against maxOutputTokens, so a cap meant for the reply would starve the thinking:
# it is sent as llm_max_tokens + the thinking budget (this, Flash's largest, when the model picks its own).
GEMINI_MAX_THINKING = 24576


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
    return any(
        "PerDay" in str(v.get("quotaId", ""))
        for d in _error_details(exc)
        if d.get("@type", "").endswith("QuotaFailure")
        for v in d.get("violations") or []
    )


def _gemini_retryable(exc):
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        return exc.code in (500, 502, 503, 504) or (exc.code == 429 and not _per_day_quota(exc))
    return transport(exc, "TransportError")


def _gemini_describe(exc):
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        quota = " (per-day quota, not retried)" if exc.code == 429 and _per_day_quota(exc) else ""
        return one_line(f"api error: {exc.code} {exc.status}{quota}: {one_line(exc.message, 1000)}")
    return one_line(f"api error: {exc_text(exc)}")


def _gemini_body(exc):
    details = getattr(exc, "details", None)
    return json.dumps(details, indent=1) if details is not None else exc_text(exc)


GEMINI_ERRORS = {
    "retryable": _gemini_retryable,
    "delay": _retry_delay,
    "describe": _gemini_describe,
    "body": _gemini_body,
    "timed_out": lambda e: transport(e, "TimeoutException"),
}


def gemini_asker(cfg, llm=None):
    """`llm`: the models-file entry (models.py) naming the model, its base URL and its key's variable; None: the
    SDK's own environment (GOOGLE_GEMINI_BASE_URL, GOOGLE_API_KEY / GEMINI_API_KEY, Vertex AI) and llm_model."""
    from google import genai
    from google.genai import types

    vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")
    key_env = (llm or {}).get("key_env")
    if key_env and not os.environ.get(key_env):
        raise UsageError(
            f"model {llm['name']!r} reads its key from {key_env}, which is not set: export {key_env}, "
            f"or use {flag('advisor', 'replay')}"
        )
    if not key_env and not vertex and not (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
        raise UsageError(
            f"arm {cfg.arm!r} asks Gemini but no key is set: export GOOGLE_API_KEY or GEMINI_API_KEY "
            f"(or GOOGLE_GENAI_USE_VERTEXAI=true for Vertex AI), or use {flag('advisor', 'replay')}"
        )
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
        resp, out = call_with_retries(
            cfg,
            "gemini",
            GEMINI_ERRORS,
            lambda: client.models.generate_content(model=model, contents=text, config=config),
            model,
        )
        out["response_format"] = "json_schema" if cfg.parser == "json" else "text"
        if "error" in out:
            return out
        cand = resp.candidates[0] if resp.candidates else None
        parts = (cand.content.parts if cand and cand.content and cand.content.parts else None) or []
        usage, finish = resp.usage_metadata, cand.finish_reason if cand else None
        out.update(
            reply="".join(p.text for p in parts if p.text and not p.thought),
            model_version=resp.model_version,
            finish_reason=getattr(finish, "name", finish or ""),
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            thought_tokens=usage.thoughts_token_count if usage else None,
        )
        return out

    return ask, {"model": model, "records": {}}
