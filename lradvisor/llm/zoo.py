"""Which model answers, where it is served, and what its tokens cost: the models file (`--models FILE`, YAML).

    fast-flash:                        # the name given to --llm-model / --llm-models, and shown in compare's rows
      provider: gemini                 # gemini (google-genai) or openai (any OpenAI-compatible server)
      base_url: https://...            # default: the provider's (GOOGLE_GEMINI_BASE_URL / OPENAI_BASE_URL, or its API)
      model: gemini-3.5-flash          # the name sent on the wire; default: the entry's name
      key_env: MY_GEMINI_KEY           # the NAME of the environment variable holding the key, never a key;
                                       # default: the provider's usual (GOOGLE_API_KEY / GEMINI_API_KEY, OPENAI_API_KEY)
      price_input: 1.0                 # USD per million prompt tokens
      price_output: 1.0                # USD per million reply tokens
      price_thinking: 1.0              # USD per million thinking tokens; default: price_output (both bill them so)

No price is built in as a fact: prices change and the file is the user's (scripts/models.example.yaml has obvious
placeholders). A model not in the file is named `provider:model` (`gemini:gemini-3.5-flash`, `openai:gpt-5-mini`);
it has no price, so its cost is empty, never 0. A plain name without a models file is the older `--llm-model`: the
arm's advisor asks it with the provider's environment.
"""

import math
import re

from lradvisor.arms import LLMS, check_id, flag
from lradvisor.errors import UsageError

PROVIDERS = LLMS  # who serves a model
FIELDS = ("provider", "base_url", "model", "key_env", "price_input", "price_output", "price_thinking")
PRICES = ("price_input", "price_output", "price_thinking")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # a key pasted by mistake (mixed case, dashes) does not pass


def read(path):
    """name -> entry (every field of FIELDS, None where not given) of a models file, or UsageError saying what is
    wrong. Values of key_env are never echoed: one may be a key pasted in the wrong place."""
    if path in ("", "none"):
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_loader(yaml))
    except OSError as e:
        raise UsageError(
            f"cannot read models file {path!r} ({e.strerror}); give a YAML file (see scripts/models.example.yaml)"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"models file {path!r} is not UTF-8 text; give a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"models file {path!r} is not valid YAML{where}: {what}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"models file {path!r} must map model names to their fields (see scripts/models.example.yaml)")
    return {str(name): _entry(path, str(name), fields) for name, fields in data.items()}


def _loader(yaml):
    """yaml's SafeLoader, refusing a key given twice in one mapping: plain YAML keeps the last one silently, so a second
    `m1:` entry or `price_input` would change a study's model or cost unseen."""

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.MarkedYAMLError(
                        problem=f"the key {str(key)[:40]!r} is given twice (keep one)", problem_mark=key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _entry(path, name, fields):
    where = f"models file {path!r}, model {name!r}"
    check_id(name, f"model name in {path!r}")
    if not isinstance(fields, dict):
        raise UsageError(f"{where}: give its fields as a mapping (provider, base_url, model, key_env, prices)")
    unknown = [k for k in fields if k not in FIELDS]
    if unknown:
        raise UsageError(
            f"{where}: unknown field {unknown[0]!r}; valid: {', '.join(FIELDS)} (a key goes in the "
            "environment variable that key_env names, never in this file)"
        )
    e = {k: fields.get(k) for k in FIELDS}
    if e["provider"] not in PROVIDERS:
        raise UsageError(f"{where}: provider must be one of {', '.join(PROVIDERS)}")
    for k in ("base_url", "model"):
        if e[k] is not None and not (isinstance(e[k], str) and e[k].strip()):
            raise UsageError(f"{where}: {k} must be a non-empty string")
    if e["base_url"] is not None and not re.match(r"^https?://", e["base_url"]):
        raise UsageError(f"{where}: base_url must start with http:// or https://")
    if e["key_env"] is not None and not (isinstance(e["key_env"], str) and ENV_NAME.match(e["key_env"])):
        raise UsageError(
            f"{where}: key_env must be the name of an environment variable (A-Z, 0-9, _), e.g. "
            "GEMINI_API_KEY; put the key itself in that variable, never in this file"
        )
    for k in PRICES:
        v = e[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise UsageError(f"{where}: {k} must be a number >= 0 (USD per million tokens)")
    if (e["price_input"] is None) != (e["price_output"] is None):
        raise UsageError(f"{where}: give price_input and price_output together (USD per million tokens), or neither")
    if e["price_thinking"] is not None and e["price_input"] is None:
        raise UsageError(f"{where}: price_thinking needs price_input and price_output too")
    e["name"], e["model"] = name, e["model"] or name
    return e


def pick(llm_model, path, advisor, arm):
    """The entry that answers an LLM arm: from the models file, or `provider:model`; None for a plain name (or auto)
    without a models file, which the arm's advisor asks as before. UsageError for what cannot be asked."""
    entries = read(path)
    if llm_model in entries:
        e = entries[llm_model]
    elif ":" in llm_model:
        provider, model = llm_model.split(":", 1)
        if provider not in PROVIDERS or not model:
            raise UsageError(
                f"llm_model {llm_model!r}: give provider:model with provider one of {', '.join(PROVIDERS)}"
                + (f", or a name from {path!r}: {', '.join(entries)}" if entries else "")
            )
        e = {k: None for k in FIELDS} | {"name": llm_model, "provider": provider, "model": model}
    elif entries and llm_model != "auto":
        raise UsageError(
            f"llm_model {llm_model!r} is not in models file {path!r} (it has: {', '.join(entries)}); "
            "give one of those, or provider:model for a model not in it"
        )
    else:
        return None
    if advisor not in ("", "preset") and advisor != e["provider"]:
        raise UsageError(
            f"arm {arm!r}: llm_model {llm_model!r} is served by provider {e['provider']}, but advisor is "
            f"{advisor}; leave {flag('advisor', 'preset')} (the model picks its provider)"
        )
    return e


def priced(entry):
    return entry is not None and entry.get("price_input") is not None


def cost_usd(entry, got):
    """USD of one exchange from its token counts and the entry's prices; None when a price or a count is unknown.
    A reply that never came (every attempt failed) has no counts: None as well, since a provider may still bill."""
    if not priced(entry) or got.get("prompt_tokens") is None or got.get("output_tokens") is None:
        return None
    thinking = entry["price_thinking"] if entry["price_thinking"] is not None else entry["price_output"]
    return (
        got["prompt_tokens"] * entry["price_input"]
        + got["output_tokens"] * entry["price_output"]
        + (got.get("thought_tokens") or 0) * thinking
    ) / 1e6


def public(entry):
    """What a run records of its model entry (the artifact advisor/model.json): every field (key_env is a name), the
    base URL without user:password@ or a query string."""
    from lradvisor.llm.compatible import public_url

    out = {k: entry[k] for k in ("name", *FIELDS)}
    if out["base_url"]:
        out["base_url"] = public_url(out["base_url"])
    return out
