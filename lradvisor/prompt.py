"""What the LLM is asked, and how its reply becomes a learning rate.

The `losses` arm reproduces the published prompt line for line (including Python's float formatting,
e.g. 0.010000000000000002 after a StepLR cut); the other signals add lines in the same style.

Trend labels, defined here once and used for losses and gradient norms alike:
- overall trend (first vs last value in the window): "decreasing" if the last is >2 % below the first,
  "increasing" if >2 % above, otherwise "unchanged or fluctuating" (also with a single value);
- recent trend (last 3 values): "stable" if they lie within 1 % of their mean (also with a single value),
  "decreasing"/"increasing" if strictly monotonic, otherwise "fluctuating".
"""

import json
import re

from lradvisor.data import CLASSES

HEAD = "Based on the following training loss trajectory, what would be a recommended new learning rate?"
TAIL = ('Consider if the learning rate should be increased, decreased, or kept the same, and suggest\n'
        'a specific value or a strategy (e.g., "reduce by factor of 10"). Also, explain your reasoning\n'
        'briefly.')
JSON_TAIL = 'Answer in JSON with the fields "learning_rate" (a number) and "reasoning" (a string).'
RECENT = 3
# Structured output for parser=json, sent as the SDK's response schema.
JSON_SCHEMA = {
    "type": "object",
    "properties": {"learning_rate": {"type": "number"}, "reasoning": {"type": "string"}},
    "required": ["learning_rate", "reasoning"],
}


def overall_trend(values):
    if len(values) < 2 or values[0] == 0:
        return "unchanged or fluctuating"
    change = (values[-1] - values[0]) / abs(values[0])
    return "decreasing" if change < -0.02 else "increasing" if change > 0.02 else "unchanged or fluctuating"


def recent_trend(values):
    v = values[-RECENT:]
    mean = sum(v) / len(v)
    if len(v) < 2 or max(abs(x - mean) for x in v) <= 0.01 * abs(mean):
        return "stable"
    steps = [b - a for a, b in zip(v, v[1:])]
    return "decreasing" if all(s < 0 for s in steps) else "increasing" if all(s > 0 for s in steps) else "fluctuating"


def build_prompt(signals, history, current_lr, window, json_reply=False):
    """history: per-epoch lists 'lr', 'train_loss', 'grad_norm', 'class_acc' (dicts of class -> %)."""
    n = min(window, len(history["train_loss"]))
    losses = [float(x) for x in history["train_loss"][-n:]]
    lines = [f"- Current Learning Rate: {current_lr}"]
    if "lr_history" in signals:
        lines.append(f"- Learning rate history (per-epoch, last {n} epochs): {[float(x) for x in history['lr'][-n:]]}")
    if "losses" in signals:
        lines += [f"- Loss values (last {n} epochs): {losses}",
                  f"- Overall trend of losses: {overall_trend(losses)}",
                  f"- Recent trend (last {min(n, RECENT)} epochs): {recent_trend(losses)}"]
    if "grad_norms" in signals:
        norms = [float(x) for x in history["grad_norm"][-n:]]
        lines += [f"- Gradient norms (per-epoch mean, last {n} epochs): {norms}",
                  f"- Overall trend of gradient norms: {overall_trend(norms)}"]
    if "per_class" in signals:
        acc = history["class_acc"][-1]
        worst = sorted(CLASSES, key=lambda c: acc[c])[:3]
        lines += ["- Per-class test accuracy: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in CLASSES),
                  "- Worst three classes: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in worst)]
    tail = TAIL + ("\n\n" + JSON_TAIL if json_reply else "")
    return HEAD + "\n\n" + "\n".join(lines) + "\n\n" + tail


# ----------------------------------------------------------------------------------------------------------
# Replies

# The published rule: the first number after the words "learning rate" or "LR" (whole words, any case).
PHRASE = re.compile(r"\b(?:learning[\s_-]*rates?|lrs?)\b", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_regex(text):
    """Return (number or None, reason when None)."""
    phrase = PHRASE.search(text or "")
    if not phrase:
        return None, "no 'learning rate' or 'LR' in reply"
    number = NUMBER.search(text, phrase.end())
    if not number:
        return None, "no number after 'learning rate'/'LR'"
    return float(number.group()), ""


def parse_json(text):
    body = (text or "").strip()
    if body.startswith("```"):  # tolerate a fenced block
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(body)["learning_rate"]
    except (ValueError, TypeError, KeyError):
        return None, "invalid JSON or no learning_rate field"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "learning_rate is not a number"
    return float(value), ""


PARSERS = {"regex": parse_regex, "json": parse_json}


def decide(proposed, scheduler_lr, max_factor=0.0):
    """Return (applied_lr, accepted, reason). A proposal in (0, 1) replaces the scheduler's LR; with
    max_factor f > 0 it is first clamped to [s / f, s * f] around the scheduler's value s."""
    if proposed is None:
        return scheduler_lr, False, "no number"
    if not 0 < proposed < 1:
        return scheduler_lr, False, f"out of range (0, 1): {proposed:g}"
    if max_factor > 0:
        clamped = min(max(proposed, scheduler_lr / max_factor), scheduler_lr * max_factor)
        if clamped != proposed:
            return clamped, True, f"accepted, clamped to {clamped:g} by max_factor {max_factor:g}"
    return proposed, True, "accepted"
