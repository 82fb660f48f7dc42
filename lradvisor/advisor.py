"""The LLM advisor: ask Gemini (or replay a recorded run) for the next LR, and record every exchange.

An asker is a plain function `ask(epoch, prompt) -> dict` returning the reply text and what is known about
the call; `consult` turns it into the next epoch's LR by the published rule (prompt.py) and logs the
exchange to MLflow: prompt and reply as text artifacts, a row of advisor/calls.json, two metrics and a
trace span. The API key is read by the SDK from the environment and never passes through this module.
"""

import json
import os
import random
import time
import warnings

import mlflow
import tenacity

from lradvisor import prompt as P
from lradvisor import tracking
from lradvisor.arms import UsageError, flag

TABLE = "advisor/calls.json"


class AdvisorError(Exception):
    """An exchange failed and on_advisor_error=fail asked for the run to stop."""


def make_asker(args, spec):
    """An asker is `ask(epoch, prompt, state) -> dict` (state: the scheduler's LR and the recent losses, for the
    controls, which answer without an LLM). None for arms that never ask. Also loads and checks the prompt
    template into spec (load_template)."""
    if not spec["every"]:
        return None
    load_template(args, spec)
    return ASKERS[spec["advisor"]](args)


def load_template(args, spec):
    """Fill spec["template"] (None: the built-in published family) from `prompt`: a text file, or
    prompts:/NAME/VERSION or prompts:/NAME@ALIAS from the MLflow Prompt Registry. Checked before training."""
    spec["template"] = spec["prompt_version"] = None
    if not spec["every"] or args.prompt in ("", "published"):
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
    P.check_template(spec["template"], f"prompt {args.prompt}")
    return spec


def prepare_run(args, spec):
    if not spec["every"]:
        return
    # What the run's prompts were made from, next to them; and MLflow's own link from the prompt version.
    template = spec.get("template") or P.builtin_template(spec["signals"], args.window, args.parser == "json")
    mlflow.log_text(template, "advisor/prompt_template.txt")
    if spec.get("prompt_version") is not None:
        mlflow.MlflowClient().link_prompt_version_to_run(mlflow.active_run().info.run_id, spec["prompt_version"])
    # Traces would switch the experiment page to the GenAI layout; keep it on the training-runs table.
    exp_id = mlflow.active_run().info.experiment_id
    mlflow.MlflowClient().set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    if spec["advisor"] == "replay":
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

    def ask(epoch, text, state=None):
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

    def wait(state):  # exponential backoff with jitter, but never sooner than the server's Retry-After
        backoff = tenacity.wait_exponential_jitter(initial=1, max=args.llm_max_wait)(state)
        return max(backoff, _retry_after(state.outcome.exception()))

    def log_retry(state):
        print(f"  openai: {_openai_describe(state.outcome.exception())}; retry {state.attempt_number}/"
              f"{args.llm_attempts - 1} in {state.next_action.sleep:.1f}s", flush=True)

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
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(args.llm_attempts), wait=wait,
                                     retry=tenacity.retry_if_exception(_openai_retryable), before_sleep=log_retry,
                                     reraise=True)
        t0 = time.perf_counter()
        out = {"model": args.llm_model, "attempts": 0}
        try:
            for attempt in retrying:
                with attempt:
                    out["attempts"] = attempt.retry_state.attempt_number
                    resp = create(text)
        except Exception as e:
            out.update(error=_openai_describe(e), latency_s=time.perf_counter() - t0)
            return out
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None)
        out.update(reply=(choice.message.content if choice and choice.message else None) or "",
                   model_version=resp.model, finish_reason=(choice.finish_reason if choice else "") or "",
                   latency_s=time.perf_counter() - t0,
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


# ----------------------------------------------------------------------------------------------------------
# One exchange: ask, parse, decide, record

def consult(ask, args, spec, epoch, history, scheduler_lr, journal=None):
    """Return the LR for the next epoch and the exchange's row of the calls table, after logging it (the
    row goes to `journal` first, so that it survives a tracking server that goes away meanwhile)."""
    text = P.build_prompt(spec["signals"], history, scheduler_lr, args.window, json_reply=args.parser == "json",
                          template=spec.get("template"), epochs=args.epochs)
    state = {"scheduler_lr": scheduler_lr, "losses": history["train_loss"][-args.window:]}
    model = args.llm_model if spec["advisor"] in LLMS + ("replay",) else spec["advisor"]
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
        span.set_outputs({"parsed_lr": proposed, "applied_lr": applied, "accepted": accepted, "reason": reason,
                          **{k: v for k, v in got.items() if k != "model"}})
    row = _record(epoch, text, got, proposed, scheduler_lr, applied, accepted, reason, journal)
    history.setdefault("proposals", []).append((epoch, proposed, accepted))  # what the feedback signal shows
    if "error" in got and args.on_advisor_error == "fail" and spec["advisor"] in LLMS:
        raise AdvisorError(f"{spec['advisor']} exchange after epoch {epoch} failed ({reason}) and on_advisor_error is fail")
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


def record_rollback(exchange_epoch, epoch, lr, loss, previous, scheduler_lr, factor, journal=None):
    """guard=rollback undid epoch `epoch` (trained at the advisor's `lr`): a note under its exchange in the calls
    table (model "guard"; replay skips it) and the metric advisor_rollback."""
    reason = (f"rolled back: epoch {epoch} at lr {lr:g} ended with training loss {loss:.4g} (limit {factor:g} x "
              f"{previous:.4g}); trained again at the scheduler's lr {scheduler_lr:g}")
    row = {"epoch": exchange_epoch, "parsed_lr": None, "scheduler_lr": scheduler_lr, "applied_lr": scheduler_lr,
           "accepted": False, "reason": reason, "model": "guard"}
    if journal is not None:
        journal.append({"epoch": epoch, "rollback": row})
    mlflow.log_table({k: [v] for k, v in row.items()}, artifact_file=TABLE)
    mlflow.log_metric("advisor_rollback", 1.0, step=epoch)
    print(f"  guard: {reason}", flush=True)


def register_builtin(prefix):
    """Register the published prompt family in the MLflow Prompt Registry: one prompt per published LLM arm's
    signals (window 5), NAME-<arm>, a new version each time. Returns [(name, version)]."""
    import mlflow.genai
    from lradvisor.arms import ARMS
    tracking.check_id(prefix, "name")
    out = []
    for arm in ("losses", "lr_history", "grad_norms", "per_class", "feedback"):
        template = P.builtin_template(ARMS[arm]["signals"], 5)
        version = mlflow.genai.register_prompt(f"{prefix}-{arm}", template, commit_message=f"lradvisor built-in, arm {arm}",
                                               tags={"source": "lradvisor"})
        out.append((version.name, version.version))
    return out
