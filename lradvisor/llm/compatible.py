"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, scripts/local_llm.py, gateways) through the openai
client, behind the one retry layer (llm/retries.py): `openai_asker(cfg, llm) -> (ask, info)` as askers.py describes.
Keys are read from the environment; the placeholder key of a key-less local server never leaves this process except
in the Authorization header to that server."""

import dataclasses
import os
import time
import warnings

from lradvisor.arms import flag
from lradvisor.errors import UsageError
from lradvisor.llm import prompt as P
from lradvisor.llm.retries import call_with_retries, exc_text, one_line


def _local(url):
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")


def public_url(url):
    """A base URL as it may be recorded: no user:password@, no query string (where keys sometimes hide)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return u._replace(
        netloc=u.hostname + (f":{u.port}" if u.port else "") if u.hostname else u.netloc, query="", fragment=""
    ).geturl()


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
        return one_line(
            f"api error: {exc.status_code}{' ' + str(kind) if kind else ''}: "
            f"{one_line(message or body or exc.message, 1000)}"
        )
    return one_line(f"api error: {exc_text(exc)}")


def _openai_body(exc):
    response = getattr(exc, "response", None)
    try:
        return response.text if response is not None else exc_text(exc)
    except Exception:  # a streamed or closed response
        return exc_text(exc)


OPENAI_ERRORS = {
    "retryable": _openai_retryable,
    "delay": _retry_after,
    "describe": _openai_describe,
    "body": _openai_body,
    "timed_out": lambda e: type(e).__name__ == "APITimeoutError",
}


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
            warnings.warn(
                f"the server at {where} does not list model {cfg.llm_model!r} (it lists: {shown()}); "
                "it may answer under another model"
            )
        return cfg.llm_model
    give = flag("llm_model", "NAME")
    if ids is None:
        raise UsageError(
            f"llm_model auto: cannot list the models of {where} ({models['error']}); start the server, or give {give}"
        )
    if not ids:
        raise UsageError(f"llm_model auto: the server at {where} lists no model; give {give}")
    if len(ids) > 1:
        raise UsageError(
            f"llm_model auto: the server at {where} serves {len(ids)} models ({shown()}); "
            f"pick one with {flag('llm_model', ids[0])}"
        )
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
        raise UsageError(
            f"arm {cfg.arm!r} asks an OpenAI-compatible server at {public_url(base) if base else 'api.openai.com'}, "
            f"which needs a key: export {key_env} (a local server at http://127.0.0.1:PORT/v1 needs none), "
            f"or use {flag('advisor', 'replay')}"
        )
    if llm:
        cfg = dataclasses.replace(cfg, llm_model=llm["model"])
    # The client's own retries are off: tenacity is the one retry layer, as for Gemini. Local servers take any
    # key; the placeholder never leaves this process except in the Authorization header to that server.
    client = openai.OpenAI(api_key=key or "not-needed", base_url=base or None, max_retries=0, timeout=cfg.llm_timeout)
    models = _server_models(client, public_url(base or "https://api.openai.com/v1"))
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
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "learning_rate", "strict": True, "schema": P.JSON_SCHEMA},
            }
        elif form == "json_object":
            extra["response_format"] = {"type": "json_object", "schema": P.JSON_SCHEMA}
        try:
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **extra)
        except openai.APIStatusError as e:
            said = _openai_body(e).lower()
            if (
                form != "text"
                and e.status_code in (400, 422, 500)
                and ("response_format" in said or "json_schema" in said)
            ):
                now["form"] += 1
                warnings.warn(
                    f"the server refused response_format {form} ({_openai_describe(e)}); asking with "
                    f"{forms[now['form']]} from now on"
                )
                return create(text)
            if now["cap"] == "max_tokens" and e.status_code == 400 and "max_completion_tokens" in said:
                now["cap"] = "max_completion_tokens"  # OpenAI's reasoning models refuse the older name
                return create(text)
            raise

    def ask(epoch, text, state=None):
        resp, out = call_with_retries(cfg, "openai", OPENAI_ERRORS, lambda: create(text), model)
        out["response_format"] = forms[now["form"]]
        if "error" in out:
            return out
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None)
        thought = getattr(details, "reasoning_tokens", None) if details else None
        # OpenAI's completion_tokens include the reasoning tokens; Gemini counts them apart. Recorded as Gemini
        # does (output = the reply's own), so that tokens and cost never count reasoning twice.
        out.update(
            reply=(choice.message.content if choice and choice.message else None) or "",
            model_version=resp.model,
            finish_reason=(choice.finish_reason if choice else "") or "",
            prompt_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens - (thought or 0)
            if usage and usage.completion_tokens is not None
            else None,
            thought_tokens=thought,
        )
        return out

    return ask, {"model": model, "records": {"advisor/server_models.json": models}}
