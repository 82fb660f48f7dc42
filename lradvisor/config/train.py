"""One run's settings: the published setup by default. Its settings are the run's MLflow params."""

from dataclasses import dataclass

from lradvisor.arms import ARMS, MODELS, SEARCH_ARMS, SIGNALS
from lradvisor.config.fields import ADVICE, ADVISOR, DEVICES, finite, rules, setting, settings


@dataclass(frozen=True)
class TrainConfig:
    """One run: the published setup by default (ResNet-18 on CIFAR-10, SGD, StepLR, 20 epochs)."""

    arm: str = setting("baseline", f"preset: {', '.join(ARMS)}")
    seed: int = setting(0, "seed of init, shuffling, augmentation and subset")
    epochs: int = setting(20, "epochs to train")
    batch_size: int = setting(128, "training batch size")
    lr: float = setting(0.1, "initial learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.001, "SGD weight decay")
    schedule: str = setting(
        "preset",
        "LR schedule: preset (the arm's own; step for most), step, cosine, onecycle, linear, plateau, constant",
        unset="preset",
    )
    schedule_file: str = setting(
        "none",
        'JSON file {"lr": [one LR per epoch]} the run follows (schedule `file`; how '
        "a PBT winner is trained again); none: off",
        unset="none",
    )
    step_size: int = setting(5, "StepLR: cut the LR every this many epochs")
    gamma: float = setting(0.1, "StepLR (and plateau): multiply the LR by this at each cut")
    subset_ratio: float = setting(1.0, "class-stratified fraction of the training set, in (0, 1]")
    holdout: float = setting(
        0.0,
        "class-stratified, seed-determined fraction of the training set held out as the "
        "validation split every decision reads instead of the test set (per-class accuracy, "
        "plateau, credit), in [0, 0.5); 0 = the published protocol",
    )
    dataset: str = setting(
        "cifar10",
        "cifar10 (published), cifar100, or digits (scikit-learn's bundled 8x8 digits, no "
        "download; best tried with --lr 0.02 --batch-size 16)",
    )
    data_dir: str = setting("data", "folder holding (or receiving) cifar-10-batches-py / cifar-100-python")
    model: str = setting("resnet18", "resnet18 (CIFAR stem) or resnet18_imagenet_stem")
    width: int = setting(
        64,
        "channels of the model's first stage, doubled at each of the other three: 64 is ResNet-18 as published; "
        "16 has 1/16 of its FLOPs and trains digits ~8x faster on 2 CPU cores (a quick look, not the published net)",
    )
    device: str = setting("auto", DEVICES)
    compile: int = setting(0, "1: torch.compile the model (one-time compile cost)")
    precision: str = setting(
        "auto", "auto (bf16 where the GPU or CPU has native bf16, else fp32), fp32 or bf16 (autocast)"
    )
    channels_last: str = setting("auto", "image memory layout: auto (on for CUDA and CPUs with native bf16), 0 or 1")
    # ---- the advisor
    signals: str = setting(
        "preset", f"override the arm's prompt signals: comma list of {', '.join(SIGNALS)}", ADVISOR, unset="preset"
    )
    every: str = setting(
        "preset", "override the arm's cadence: ask after every N-th epoch (0 = never)", ADVISOR, unset="preset"
    )
    window: int = setting(5, "how many recent epochs the prompt shows", ADVISOR)
    prompt: str = setting(
        "published",
        "published (the built-in family), a text file, prompts:/NAME/VERSION or "
        "prompts:/NAME@ALIAS (MLflow Prompt Registry) with {{variable}} placeholders",
        ADVISOR,
    )
    parser: str = setting(
        "regex", "regex (published: first number after 'learning rate'/'LR') or json (response schema)", ADVISOR
    )
    max_factor: float = setting(0.0, "clamp an accepted LR to [s/f, s*f] around the scheduler's s; 0 = off", ADVISOR)
    advisor: str = setting(
        "preset",
        "preset (the arm's own: gemini, or random/textbook for the controls), gemini, "
        "openai (any OpenAI-compatible server: OPENAI_BASE_URL, OPENAI_API_KEY), random, textbook, "
        "or replay (answers from --replay-run-id, no network)",
        ADVISOR,
        unset="preset",
    )
    replay_run_id: str = setting("none", "run whose recorded replies --advisor replay uses", ADVISOR, unset="none")
    llm_model: str = setting(
        "auto",
        "model to ask: a name from --models, provider:model (gemini:gemini-3.5-flash, "
        "openai:gpt-5-mini), or a name the arm's advisor asks; auto: gemini-3.5-flash for Gemini, "
        "the one model an OpenAI-compatible server lists",
        ADVISOR,
        unset="auto",
    )
    temperature: float = setting(1.0, "sampling temperature", ADVISOR)
    models: str = setting(
        "none",
        "YAML models file: per name its provider, base_url, model, key_env (the NAME of the "
        "variable holding its key) and prices in USD per million tokens "
        "(scripts/models.example.yaml); none: off",
        ADVISOR,
        unset="none",
    )
    advice: str = setting(
        "sync",
        "sync (published: the next epoch waits for the reply), async (asked in the "
        "background, the reply applied from the first epoch after it arrives) or async_step (from the "
        "first batch after it arrives)",
        ADVISOR,
    )
    thinking_budget: int = setting(-1, "thinking tokens (0 = off); -1 = the model's default, not sent", ADVISOR)
    llm_attempts: int = setting(6, "attempts per exchange (429/5xx/timeouts are retried)", ADVISOR)
    llm_max_wait: float = setting(
        60.0,
        "cap of the exponential backoff in seconds; a server asking for a longer wait "
        "(Retry-After, retryDelay) ends the exchange as failed",
        ADVISOR,
    )
    llm_timeout: float = setting(
        60.0,
        "timeout of one LLM request in seconds; after a timeout the next attempt waits at least this long",
        ADVISOR,
    )
    llm_max_tokens: int = setting(
        1024,
        "cap of the reply's tokens (max_tokens; Gemini: maxOutputTokens = this + the thinking budget); 0 = none sent",
        ADVISOR,
    )
    on_advisor_error: str = setting(
        "continue", "continue (keep the scheduler's LR) or fail (end the run FAILED)", ADVISOR
    )
    guard: str = setting(
        "off",
        "off (published) or rollback: an epoch at the advisor's LR whose loss explodes is "
        "trained again at the scheduler's LR",
        ADVISOR,
    )
    guard_factor: float = setting(
        3.0, "rollback when the epoch's training loss exceeds this x the previous epoch's (or is not finite)", ADVISOR
    )
    credit_epochs: int = setting(
        0,
        "k >= 1: every decision that moved the LR is measured against a branch trained k "
        "epochs from the same state at the scheduler's LR (credit_acc, credit_loss); 0 = off",
        ADVISOR,
    )
    experiment: str = setting("lradvisor", "MLflow experiment (ignored inside `mlflow run`, which picks it)", None)

    @property
    def decision_split(self):
        """Where the decisions' held-out numbers (per-class accuracy, plateau, credit) come from."""
        return "validation" if self.holdout > 0 else "test"

    def params(self):
        """What the run logs as MLflow params: every setting but where it is filed."""
        return {f.name: getattr(self, f.name) for f in settings(self) if f.name != "experiment"}

    # The rules are a table, one rule a line: kept out of the formatter's hands.
    # fmt: off
    def check(self, by_search=False):
        """Raise UsageError for the first invalid setting. `by_search`: the search arms may be trained (search.py)."""
        from lradvisor.arms import read_schedule_file, resolve
        from lradvisor.data.registry import check_name
        finite(self)
        check_name(self.dataset)
        rules([
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.step_size > 0, f"step_size must be > 0, got {self.step_size}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (0 < self.subset_ratio <= 1, f"subset_ratio must be in (0, 1], got {self.subset_ratio}"),
            (0 <= self.holdout < 0.5, f"holdout must be in [0, 0.5) (0 = no validation split), got {self.holdout}"),
            (self.model in MODELS, f"unknown model {self.model!r}; valid models: {', '.join(MODELS)}"),
            (self.width > 0, f"width must be > 0 (64 = ResNet-18 as published), got {self.width}"),
            (self.device in ("auto", "cpu") or self.device.split(":")[0] == "cuda",
             f"unknown device {self.device!r}; valid: {DEVICES}"),
            (self.compile in (0, 1), f"compile must be 0 or 1, got {self.compile}"),
            (self.precision in ("auto", "fp32", "bf16"),
             f"unknown precision {self.precision!r}; valid: auto, fp32, bf16"),
            (self.channels_last in ("auto", "0", "1"),
             f"unknown channels_last {self.channels_last!r}; valid: auto, 0, 1"),
            (self.window > 0, f"window must be > 0, got {self.window}"),
            (self.parser in ("regex", "json"), f"unknown parser {self.parser!r}; valid: regex, json"),
            (self.max_factor == 0 or self.max_factor >= 1,
             f"max_factor must be 0 (off) or >= 1, got {self.max_factor}"),
            (self.guard in ("off", "rollback"), f"unknown guard {self.guard!r}; valid: off, rollback"),
            (self.guard_factor > 1, f"guard_factor must be > 1, got {self.guard_factor}"),
            (self.credit_epochs >= 0, f"credit_epochs must be >= 0 (0 = off), got {self.credit_epochs}"),
            (self.llm_attempts > 0, f"llm_attempts must be > 0, got {self.llm_attempts}"),
            (self.llm_max_wait >= 0, f"llm_max_wait must be >= 0, got {self.llm_max_wait}"),
            # The SDK takes whole milliseconds, and 0 means no timeout at all.
            (self.llm_timeout >= 1, f"llm_timeout must be >= 1 (seconds), got {self.llm_timeout}"),
            (self.llm_max_tokens >= 0, f"llm_max_tokens must be >= 0 (0 = none sent), got {self.llm_max_tokens}"),
            (self.on_advisor_error in ("continue", "fail"),
             f"unknown on_advisor_error {self.on_advisor_error!r}; valid: continue, fail"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.advice in ADVICE, f"unknown advice {self.advice!r}; valid: {', '.join(ADVICE)}"),
            # A rollback trains the advised epoch again and a credit branch starts where the reply is applied: both
            # need the reply to apply from an epoch's start, which async_step does not keep to.
            (self.advice != "async_step" or self.guard == "off", "guard rollback retrains an epoch from its start: it "
             "needs advice sync or async, not async_step (a reply lands mid-epoch)"),
            (self.advice != "async_step" or not self.credit_epochs, "credit_epochs branches from an epoch's start: it "
             "needs advice sync or async, not async_step (a reply lands mid-epoch)"),
            (self.arm not in SEARCH_ARMS or by_search, f"arm {self.arm!r} is trained by `lradvisor search --method "
             f"{self.arm.removeprefix('search_')}` (the schedule it found, on fresh seeds); pick another arm"),
        ])
        arm = resolve(self.arm, self.signals, self.every, self.advisor, self.schedule)
        if arm.oracle:  # it decides by branching on the validation split: nothing else may decide, nor the test set
            rules([(self.holdout > 0, "arm 'oracle' judges its actions on a validation split: give holdout in "
                    "(0, 0.5)"),
                   (all(v == "preset" for v in (self.signals, self.every, self.advisor)) and self.guard == "off"
                    and not self.credit_epochs and self.advice == "sync", "arm 'oracle' decides by itself: it takes "
                    "no signals, every, advisor, guard, credit_epochs or advice; leave them at their defaults")])
        if arm.optimizer != "sgd":  # it sets its own step size: nothing may steer it
            steered = [k for k, v in (("signals", self.signals), ("every", self.every), ("advisor", self.advisor),
                                      ("schedule", self.schedule)) if v != "preset"]
            steered += [k for k, v in (("schedule_file", self.schedule_file != "none"), ("guard", self.guard != "off"),
                                       ("credit_epochs", self.credit_epochs)) if v]
            rules([(not steered, f"arm {self.arm!r} ({arm.optimizer}) sets its own step size: it takes no "
                    f"{steered[0] if steered else ''}; leave it at its default")])
        from lradvisor.llm import zoo
        if arm.asks_llm:
            zoo.pick(self.llm_model, self.models, self.advisor, self.arm)  # reads and checks the models file
        else:
            zoo.read(self.models)  # a bad models file is refused whatever the arm
        rules([(self.schedule_file == "none" or self.schedule in ("preset", "file"),
                "schedule_file sets the schedule: leave schedule preset (or file)"),
               (self.schedule != "file" or self.schedule_file != "none",
                "schedule file needs a schedule_file: a JSON file {\"lr\": [one LR per epoch]}")])
        if self.schedule_file != "none":
            lrs = read_schedule_file(self.schedule_file)
            rules([(len(lrs) >= self.epochs, f"schedule file {self.schedule_file!r} has {len(lrs)} LRs for "
                    f"{self.epochs} epochs; give one per epoch"),
                   (not arm.every, "a schedule file is followed as it is: it does not take an advisor; use an arm "
                    "with no advisor (baseline) or --every 0")])
        return self
    # fmt: on
