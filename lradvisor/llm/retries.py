"""The one retry layer of every LLM provider (llm/gemini.py, llm/compatible.py), and the one-line form of what a server
said: tenacity retries what the provider says is retryable, with exponential backoff capped at llm_max_wait, never
sooner than the server asked, and after a timeout never sooner than llm_timeout."""

import time

import tenacity


def one_line(text, limit=200):
    """The first non-empty line of a message (with the next one when it only announces it, as "1 validation
    error:" does), at most `limit` characters: what records and consoles show."""
    lines = [s.strip() for s in str(text).splitlines() if s.strip()]
    line = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def call_with_retries(cfg, name, errors, call, model):
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
        print(
            f"  {name}: {errors['describe'](state.outcome.exception())}; retry {state.attempt_number}/"
            f"{cfg.llm_attempts - 1} in {state.next_action.sleep:.1f}s",
            flush=True,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(cfg.llm_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(retry),
        before_sleep=log_retry,
        reraise=True,
    )
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


def transport(exc, kind):
    """httpx / httpx2 (google-genai 3 and openai 3 use httpx2) transport errors: kind TransportError or
    TimeoutException."""
    return any(c.__module__.split(".")[0] in ("httpx", "httpx2") and c.__name__ == kind for c in type(exc).__mro__)


def exc_text(exc):
    return f"{type(exc).__name__}: {exc}"
