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
import statistics

from lradvisor.errors import UsageError

HEAD = "Based on the following training loss trajectory, what would be a recommended new learning rate?"
TAIL = (
    "Consider if the learning rate should be increased, decreased, or kept the same, and suggest\n"
    'a specific value or a strategy (e.g., "reduce by factor of 10"). Also, explain your reasoning\n'
    "briefly."
)
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


# ----------------------------------------------------------------------------------------------------------
# Templates: {{variable}} placeholders, filled from the run's history

VARIABLES = {  # name: what it holds (the README shows an example of each)
    "epoch": "the epoch just finished, 1-based",
    "epochs": "the run's total number of epochs",
    "window_epochs": "how many epochs the window shows: window, or fewer early in the run",
    "recent_epochs": "how many of them the recent trend reads: at most 3",
    "current_lr": "the LR the next epoch would train with (Python float repr)",
    "losses": "training losses of the window, a Python list",
    "loss_trend": "overall trend of those losses",
    "recent_trend": "trend of the last 3 of them",
    "lr_history": "per-epoch LRs of the window, a Python list",
    "grad_norms": "per-epoch mean gradient norms of the window, a Python list",
    "grad_norm_trend": "overall trend of those norms",
    "per_class": "per-class accuracy after the epoch: on the validation split with holdout > 0, else the test set; "
    "above 20 classes the mean, the 5 worst and the 5 best, and it says so",
    "worst_classes": "the three worst classes (of the same split)",
    "feedback": "the advisor's earlier proposals in this run and the training loss after each",
}
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def check_template(text, where):
    """Refuse placeholders we cannot fill, before any training."""
    unknown = sorted(set(PLACEHOLDER.findall(text)) - set(VARIABLES))
    if unknown:
        raise UsageError(
            f"{where}: unknown placeholder {', '.join('{{' + u + '}}' for u in unknown)}; valid: {', '.join(VARIABLES)}"
        )
    return text


# The placeholders whose values come from a held-out split: the test set unless the run has a holdout.
PER_CLASS = {"per_class", "worst_classes"}


def builtin_template(signals, json_reply=False, split="test"):
    """The published prompt family as a template. The published text names the window's length ("last 5
    epochs", "last 1 epochs" after the first), so that is a variable too: the template renders byte for byte
    what the published code printed, at every epoch and window. `split` names where per-class accuracy comes
    from (test: published; validation with a holdout), so that the prompt says what it shows."""
    lines = ["- Current Learning Rate: {{current_lr}}"]
    if "lr_history" in signals:
        lines.append("- Learning rate history (per-epoch, last {{window_epochs}} epochs): {{lr_history}}")
    if "losses" in signals:
        lines += [
            "- Loss values (last {{window_epochs}} epochs): {{losses}}",
            "- Overall trend of losses: {{loss_trend}}",
            "- Recent trend (last {{recent_epochs}} epochs): {{recent_trend}}",
        ]
    if "grad_norms" in signals:
        lines += [
            "- Gradient norms (per-epoch mean, last {{window_epochs}} epochs): {{grad_norms}}",
            "- Overall trend of gradient norms: {{grad_norm_trend}}",
        ]
    if "per_class" in signals:
        lines += [f"- Per-class {split} accuracy: {{{{per_class}}}}", "- Worst three classes: {{worst_classes}}"]
    if "feedback" in signals:
        lines.append("- Your earlier suggestions: {{feedback}}")
    tail = TAIL + ("\n\n" + JSON_TAIL if json_reply else "")
    return HEAD + "\n\n" + "\n".join(lines) + "\n\n" + tail


def feedback(history):
    """'epoch 1: 0.01 (applied, next loss 1.62), epoch 2: ...': each earlier proposal, whether the rule applied
    it, and the training loss of the epoch after it."""
    items = []
    for epoch, proposed, applied in history.get("proposals", []):
        after = history["train_loss"][epoch] if len(history["train_loss"]) > epoch else None
        what = "no number" if proposed is None else f"{proposed:g}"
        items.append(
            f"epoch {epoch}: {what} ({'applied' if applied else 'not applied'}"
            + (f", next loss {after:.4g})" if after is not None else ")")
        )
    return ", ".join(items) or "none yet"


SHOWN = 20  # classes the prompt lists one by one; with more, a summary (CIFAR-100 would be a 100-item line)


def per_class(acc):
    """'plane: 71.2%, car: 80.0%, ...' in class order; above SHOWN classes 'mean 41.3% over 100 classes; worst 5:
    ...; best 5: ...' (the worst lowest first, the best highest first)."""
    line = lambda cs: ", ".join(f"{c}: {acc[c]:.1f}%" for c in cs)  # noqa: E731
    if len(acc) <= SHOWN:
        return line(acc)
    ranked = sorted(acc, key=acc.get)
    return (
        f"mean {statistics.mean(acc.values()):.1f}% over {len(acc)} classes; worst 5: {line(ranked[:5])}; "
        f"best 5: {line(ranked[::-1][:5])}"
    )


def variables(history, current_lr, window, epochs):
    """history: per-epoch lists 'lr', 'train_loss', 'grad_norm', 'class_acc' (dicts of class -> %, in the data
    set's class order), and the advisor's 'proposals' so far."""
    n = min(window, len(history["train_loss"]))
    losses = [float(x) for x in history["train_loss"][-n:]]
    norms = [float(x) for x in history["grad_norm"][-n:]]
    acc = history["class_acc"][-1] if history["class_acc"] else {}
    worst = sorted(acc, key=lambda c: acc[c])[:3]
    return {
        "epoch": len(history["train_loss"]),
        "epochs": epochs,
        "window_epochs": n,
        "recent_epochs": min(n, RECENT),
        "current_lr": current_lr,
        "losses": losses,
        "loss_trend": overall_trend(losses),
        "recent_trend": recent_trend(losses),
        "lr_history": [float(x) for x in history["lr"][-n:]],
        "grad_norms": norms,
        "grad_norm_trend": overall_trend(norms),
        "per_class": per_class(acc),
        "worst_classes": ", ".join(f"{c}: {acc[c]:.1f}%" for c in worst),
        "feedback": feedback(history),
    }


def render(template, values):
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def build_prompt(signals, history, current_lr, window, json_reply=False, template=None, epochs=0):
    """The prompt after an epoch: the given template, or the built-in one for these signals, filled in."""
    return render(template or builtin_template(signals, json_reply), variables(history, current_lr, window, epochs))


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
    if unchanged(proposed, scheduler_lr):  # a small model echoing "Current Learning Rate: 0.1" advised nothing
        return proposed, True, "accepted, equal to the scheduler's LR"
    return proposed, True, "accepted"


def unchanged(applied, scheduler_lr):
    """The applied LR is the scheduler's (to 1e-9 relative: 0.01 against StepLR's 0.010000000000000002)."""
    return abs(applied - scheduler_lr) <= 1e-9 * abs(scheduler_lr)
