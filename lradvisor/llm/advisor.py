"""The advisor of one run: who answers (askers.py), what it is asked (prompt.py, or the run's template), and how an
exchange becomes the next LR and a record.

An exchange is asked after an epoch (`consult`: advice sync, the published protocol, waits for the reply;
`ask_in_background`: advice async / async_step, training goes on), its reply turned into an LR by the published rule
(`decide`), and recorded (`answer`, records.py): prompt and reply as text artifacts, a row of advisor/calls.json, two
metrics and a trace span. The engine's advice handlers (engine/advice.py) say when each happens.
"""

import copy
import dataclasses
import threading
import time
from typing import NamedTuple

import mlflow

from lradvisor import tracking
from lradvisor.arms import LLMS, check_id
from lradvisor.errors import AdvisorError, UsageError
from lradvisor.llm import prompt as P
from lradvisor.llm import records, zoo
from lradvisor.llm.askers import ASKERS


class Decision(NamedTuple):
    """A reply parsed (`proposed`, None if no number) and the rule applied against the scheduler's LR of the moment
    (`scheduler_lr`): `applied` (None: never applied), `accepted`, and why."""

    proposed: float | None
    applied: float | None
    accepted: bool
    reason: str
    scheduler_lr: float


class Advisor:
    """Made before training starts, so that a missing key, an unreadable template or a replay run that is not there
    is refused before any run exists. `arm` comes back with the provider of the model that answers."""

    def __init__(self, cfg, arm):
        self.cfg, self.calls = cfg, []  # calls: the rows of advisor/calls.json
        self.template, self.prompt_version = load_template(cfg, arm)
        self.llm = None  # the models-file entry that answers (an LLM arm), which brings its provider
        if arm.advisor in LLMS:
            self.llm = zoo.pick(cfg.llm_model, cfg.models, cfg.advisor, cfg.arm)
            arm = dataclasses.replace(arm, advisor=self.llm["provider"]) if self.llm else arm
        self.arm = arm
        self.ask, info = ASKERS[arm.advisor](cfg, self.llm)
        self.model, self.records = info["model"], info["records"]
        if self.llm:  # which entry answered, and at what prices: the run's cost was computed from these
            self.records["advisor/model.json"] = zoo.public(self.llm)

    @property
    def model_used(self):
        """The model name sent on the wire (llm_model_used)."""
        return self.llm["model"] if self.llm else self.model

    def saw_test(self):
        """1 when the run's decisions read test-set numbers: an advisor that reads the prompt (an LLM, or replayed LLM
        replies), a prompt with per-class accuracy, and no holdout. The controls read only the LR and the training
        losses."""
        if self.cfg.holdout > 0 or self.arm.advisor in ("random", "textbook"):
            return 0
        return int(bool(P.PER_CLASS & set(P.PLACEHOLDER.findall(self.template))))

    def prepare_run(self):
        """What the run's prompts were made from, next to them; and MLflow's own link from the prompt version."""
        mlflow.log_text(self.template, "advisor/prompt_template.txt")
        if self.prompt_version is not None:
            mlflow.MlflowClient().link_prompt_version_to_run(mlflow.active_run().info.run_id, self.prompt_version)
        for path, record in self.records.items():  # e.g. the models an OpenAI-compatible server lists
            mlflow.log_dict(record, path)
        # Traces would switch the experiment page to the GenAI layout; keep it on the training-runs table.
        exp_id = mlflow.active_run().info.experiment_id
        tracking.set_experiment_tag_once(exp_id, "mlflow.experimentKind", "custom_model_development")
        if self.arm.advisor == "replay":
            mlflow.set_tag("replay_of", self.cfg.replay_run_id)

    # ---- one exchange: ask, parse, decide, record

    def question(self, epoch, history, scheduler_lr):
        """The prompt after `epoch`, and what the controls read instead of it."""
        text = P.build_prompt(
            self.arm.signals, history, scheduler_lr, self.cfg.window, template=self.template, epochs=self.cfg.epochs
        )
        return text, {"scheduler_lr": scheduler_lr, "losses": history["train_loss"][-self.cfg.window :]}

    def decide(self, got, scheduler_lr):
        """The reply parsed and the published rule applied against the scheduler's LR of the moment it is applied."""
        if "error" in got:
            return Decision(None, scheduler_lr, False, got["error"], scheduler_lr)
        proposed, why = P.PARSERS[self.cfg.parser](got["reply"])
        applied, accepted, reason = P.decide(proposed, scheduler_lr, self.cfg.max_factor)
        if proposed is None:
            reason = why if got["reply"] else f"no reply text (finish_reason {got.get('finish_reason') or 'none'})"
        if str(got.get("finish_reason")).lower() in ("length", "max_tokens"):
            reason += (
                "; reply cut at llm_max_tokens" if self.cfg.llm_max_tokens else "; reply cut by the server's limit"
            )
        return Decision(proposed, applied, accepted, reason, scheduler_lr)

    def consult(self, epoch, history, scheduler_lr, journal=None, step=0):
        """advice sync: ask after `epoch` and wait. Returns the LR for the next epoch and the exchange's row of the
        calls table, after logging it (the row goes to `journal` first, so that it survives a tracking server that
        goes away meanwhile). `step`: the global batch number of the epoch's last batch."""
        exchange = Exchange(self, epoch, history, scheduler_lr, background=False)
        return self.answer(exchange, self.decide(exchange.got, scheduler_lr), history, journal, (epoch + 1, step + 1))

    def ask_in_background(self, epoch, history, scheduler_lr):
        """advice async / async_step: an LLM is asked on a daemon thread (Ctrl-C or the run's end never waits for it);
        the controls and a replay answer at once, without a network."""
        return Exchange(self, epoch, history, scheduler_lr, background=self.arm.advisor in LLMS)

    def answer(self, exchange, decision, history, journal, applied_at):
        """Record an exchange whose decision was applied from `applied_at` = (epoch, global batch) on, or never (None).
        Returns (the LR applied, the row)."""
        got = {k: v for k, v in exchange.got.items() if k != "arrives_step"}
        got["cost_usd"] = zoo.cost_usd(self.llm, got)
        changed = decision.applied is not None and not P.unchanged(decision.applied, decision.scheduler_lr)
        row = records.exchange(self, exchange, got, decision, changed, applied_at, journal)
        history.setdefault("proposals", []).append((exchange.epoch, decision.proposed, decision.accepted))  # feedback
        if "error" in got and self.cfg.on_advisor_error == "fail" and self.arm.advisor in LLMS:
            raise AdvisorError(
                f"{self.arm.advisor} exchange after epoch {exchange.epoch} failed ({decision.reason}) "
                "and on_advisor_error is fail"
            )
        if applied_at is None:
            outcome = decision.reason
        elif self.cfg.advice == "sync":
            outcome = f"next lr {decision.applied:.4g} ({decision.reason})"
        else:
            outcome = f"lr {decision.applied:.4g} from epoch {applied_at[0]} (step {applied_at[1]}) ({decision.reason})"
        proposed = decision.proposed if decision.proposed is not None else "-"
        print(f"  advisor after epoch {exchange.epoch}: proposed {proposed}, {outcome}", flush=True)
        return decision.applied, row

    def unapplied(self, exchange, history, epoch, journal=None):
        """Record an exchange as never applied: training ended (after `epoch`) with it in flight, or it arrived during
        the last epoch it could have changed. Returns its row."""
        arrived = exchange.ready(float("inf"))
        now = copy.copy(exchange)  # as it is now: a reply still in flight may yet arrive, and is not recorded
        now.got = exchange.got if arrived else {"model": self.model}
        now.arrived = exchange.arrived or time.time_ns()
        proposed = self.decide(now.got, now.scheduler_lr).proposed if arrived else None
        reason = (
            f"not applied: arrived after the last epoch boundary it could change (training ended after epoch {epoch})"
            if arrived
            else f"not applied: still in flight when training ended after epoch {epoch}; not waited for"
        )
        return self.answer(now, Decision(proposed, None, False, reason, now.scheduler_lr), history, journal, None)[1]


class Exchange:
    """One question after `epoch` and its answer (`got`: the asker's dict, once it arrived), with the scheduler's LR
    when asked and the times sent and arrived (ns). In the background, train.py applies the reply at the first epoch
    boundary (async) or batch (async_step) after it arrives; a replay's lands where the recorded run applied it."""

    def __init__(self, advisor, epoch, history, scheduler_lr, background):
        self.epoch, self.scheduler_lr = epoch, scheduler_lr
        self.text, state = advisor.question(epoch, history, scheduler_lr)
        self.model, self.got, self.sent, self.arrived = advisor.model, None, time.time_ns(), None
        self._done = threading.Event()
        if background:
            threading.Thread(target=self._ask, args=(advisor.ask, state), daemon=True, name=f"advisor-{epoch}").start()
        else:
            self._ask(advisor.ask, state)

    def _ask(self, ask, state):
        try:
            got = ask(self.epoch, self.text, state)
        except Exception as e:  # a bug would otherwise die with the thread, unseen: record it as the exchange
            got = {"model": self.model, "attempts": 0, "error": f"{type(e).__name__}: {e}"}
        self.arrived = time.time_ns()
        self.got = got
        self._done.set()

    def ready(self, step):
        """Whether the reply may be applied from global batch `step` on."""
        if self._done.is_set() and "arrives_step" in self.got:  # a replay: exactly where the recorded run applied it
            return self.got["arrives_step"] is not None and step >= self.got["arrives_step"]
        return self._done.is_set()


def load_template(cfg, arm):
    """(template, prompt version or None) from `prompt`: the built-in published family, a text file, or
    prompts:/NAME/VERSION or prompts:/NAME@ALIAS from the MLflow Prompt Registry. Checked before training."""
    if cfg.prompt in ("", "published"):
        return P.builtin_template(arm.signals, cfg.parser == "json", cfg.decision_split), None
    version = None
    if cfg.prompt.startswith("prompts:/"):
        import mlflow.genai

        try:
            version = mlflow.genai.load_prompt(cfg.prompt)
        except Exception as e:
            raise UsageError(
                f"cannot load prompt {cfg.prompt!r} from the registry at {mlflow.get_tracking_uri()} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); register it first, "
                "e.g. `lradvisor prompts register`"
            ) from None
        if not isinstance(version.template, str):
            raise UsageError(f"prompt {cfg.prompt!r} is a chat template; use a text prompt")
        template = version.template
    else:
        try:
            with open(cfg.prompt, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            raise UsageError(
                f"cannot read prompt file {cfg.prompt!r} ({e.strerror}); give a text file, "
                "prompts:/NAME/VERSION, prompts:/NAME@ALIAS or published"
            ) from None
        except UnicodeDecodeError as e:
            raise UsageError(
                f"prompt file {cfg.prompt!r} is not UTF-8 text (byte {e.start}: "
                f"{e.object[e.start : e.start + 1]!r}); save it as UTF-8"
            ) from None
        if "\0" in template:
            raise UsageError(f"prompt file {cfg.prompt!r} holds NUL bytes: it is not a text file") from None
    P.check_template(template, f"prompt {cfg.prompt}")
    return template, version


def register_builtin(prefix):
    """Register the published prompt family in the MLflow Prompt Registry: one prompt per LLM arm's signals,
    NAME-<arm>, a new version each time; each renders exactly the built-in prompt. Returns [(name, version)]."""
    import mlflow.genai

    from lradvisor.arms import ARMS

    check_id(prefix, "name")
    out = []
    for arm in ("losses", "lr_history", "grad_norms", "per_class", "feedback"):
        template = P.builtin_template(ARMS[arm]["signals"])
        version = mlflow.genai.register_prompt(
            f"{prefix}-{arm}", template, commit_message=f"lradvisor built-in, arm {arm}", tags={"source": "lradvisor"}
        )
        out.append((version.name, version.version))
    return out
