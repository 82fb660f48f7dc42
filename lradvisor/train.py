"""Train one arm: ResNet-18 on a data set (CIFAR-10 by default; datasets.py), SGD + an LR schedule, optionally an
advisor choosing the next epoch's LR.

Read top to bottom: set-up (device, data, model, optimizer, schedule), then one loop over epochs that
trains, evaluates, logs one row of metrics, steps the schedule, and, when the arm asks, lets the advisor
overwrite the LR of the next epoch (schedules.py says how each schedule goes on from there). Inside an
epoch nothing is read back from the device: loss, correct counts and gradient norms accumulate there and
are read once at its end; the per-step LRs are host floats already.

Decisions read held-out numbers (per-class accuracy, plateau's metric, credit) from the decision split: a
validation split of the training set with holdout > 0, else (the published protocol) the test set. With
credit_epochs = k, every decision that moved the LR gets a counterfactual branch: from the same state and
data order, k epochs at the scheduler's LR, compared with the run k epochs later (`branch`).
"""

import contextlib
import copy
import hashlib
import math
import sys
import time
import warnings

import mlflow
import torch
import torch.nn.functional as F

from lradvisor import advisor, arms, models, schedules, tracking
from lradvisor.data import DATASETS, Loader, checksums, holdout_split, load, stratified_subset
from lradvisor.device import native_bf16, pick_channels_last, pick_device, pick_precision
from lradvisor.model import build_model
from lradvisor.tracking import CLASS_METRICS, CLASS_TABLE


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss diverged); the message says why."""


def total_grad_norm(params):
    """L2 norm of all gradients together, as a device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train_epoch(model, opt, loader, autocast, sched=None, live="", before_step=None):
    """One epoch; `sched` is stepped after every batch (per-step schedules). Returns loss, accuracy, mean
    gradient norm and the LR of every step. `live` (a prefix) shows a step counter on a terminal.
    `before_step(i)` is called before batch i (from 0): where advice async_step lands a reply (host-side only)."""
    model.train()
    dev = loader.x.device
    loss_sum, correct, norm_sum = (torch.zeros((), device=dev) for _ in range(3))
    params = [p for p in model.parameters() if p.requires_grad]
    n = steps = 0
    lrs = []
    for xb, yb in loader:
        if before_step:
            before_step(steps)
        lrs.append(opt.param_groups[0]["lr"])
        with autocast():
            out = model(xb)
            loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm_sum += total_grad_norm(params)  # before the optimizer step, as the prompt describes it
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach().float() * len(yb)
        correct += (out.argmax(1) == yb).sum()
        n, steps = n + len(yb), steps + 1
        if live and steps % 10 == 0:
            print(f"\r{live} step {steps}/{len(loader)}", end="", flush=True)
    loss_sum, correct, norm_sum = torch.stack([loss_sum, correct, norm_sum]).tolist()  # the one sync
    return loss_sum / n, 100 * correct / n, norm_sum / steps, lrs


@torch.no_grad()
def evaluate(model, loader, autocast):
    """(loss, accuracy, {class name: accuracy}) over the loader's data set, read back in one sync."""
    model.eval()
    dev = loader.x.device
    classes = DATASETS[loader.dataset]["classes"]
    loss_sum = torch.zeros((), device=dev)
    right = torch.zeros(len(classes), device=dev)
    total = torch.zeros(len(classes), device=dev)
    for xb, yb in loader:
        with autocast():
            out = model(xb)
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        right.index_add_(0, yb, (out.argmax(1) == yb).float())
        total.index_add_(0, yb, torch.ones_like(yb, dtype=torch.float))
    per_class = 100 * right / total.clamp(min=1)
    loss_sum, n, n_right, *per_class = torch.cat([torch.stack([loss_sum, total.sum(), right.sum()]), per_class]).tolist()
    return loss_sum / n, 100 * n_right / n, dict(zip(classes, per_class))


def params_of(args, spec, device, n_train, n_val, n_test):
    p = {k: v for k, v in vars(args).items() if k not in ("command", "experiment")}
    p.update({"arm.signals": ",".join(spec["signals"]) or "none", "arm.every": spec["every"],
              "arm.advisor": spec["advisor"] if spec["every"] else "none", "arm.schedule": spec["schedule"],
              "llm_model_used": spec["llm"]["model"] if spec.get("llm") else spec["model"],
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision_used": pick_precision(args.precision, device),
              "channels_last_used": int(pick_channels_last(args.channels_last, device)),
              "torch_version": torch.__version__, "n_train": n_train, "n_val": n_val, "n_test": n_test})
    return p


def setup(args, x_tr, y_tr, x_te, y_te, schedule="step"):
    """Loaders, model, optimizer, schedule and autocast exactly as an arm trains (the benchmark times this)."""
    dev = x_tr.device
    cuda = dev.type == "cuda"
    bf16 = pick_precision(args.precision, dev) == "bf16"
    channels_last = pick_channels_last(args.channels_last, dev)
    train_loader = Loader(x_tr, y_tr, args.batch_size, train=True, seed=args.seed, channels_last=channels_last,
                          dataset=args.dataset)
    test_loader = Loader(x_te, y_te, 1000, train=False, seed=args.seed, channels_last=channels_last,
                         dataset=args.dataset)
    torch.manual_seed(args.seed)
    model = build_model(args.model, len(DATASETS[args.dataset]["classes"])).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cuda:  # cuDNN picks the fastest convolution algorithms for these shapes once; CPUs have nothing to pick
        torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # Fused SGD is one kernel for all parameters on CUDA; on CPU the multi-tensor (foreach) path is as fast.
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay, **({"fused": True} if cuda else {"foreach": True}))
    sched = schedules.build(schedule, opt, args, len(train_loader))
    step_model = torch.compile(model) if args.compile else model
    return train_loader, test_loader, step_model, opt, sched, autocast


def prepare(args, device, schedule, data=None):
    """A run's data on the device (the training split, the validation split with holdout > 0, the test set) and
    what setup builds on it: (train, val or None, test) loaders, model, optimizer, schedule, autocast. `data`: the
    data set as load() returns it, when the caller has it already (a PBT actor set up again)."""
    x_all, y_all, x_te, y_te = data or load(args.data_dir, args.dataset)
    keep, held = holdout_split(y_all, stratified_subset(y_all, args.subset_ratio, args.seed), args.holdout, args.seed,
                               DATASETS[args.dataset]["classes"])
    put = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    train_loader, test_loader, model, opt, sched, autocast = setup(args, put(x_all[keep]), put(y_all[keep]),
                                                                   put(x_te), put(y_te), schedule)
    val_loader = None
    if len(held):  # evaluated like the test set: no augmentation
        val_loader = Loader(put(x_all[held]), put(y_all[held]), 1000, train=False, seed=args.seed,
                            channels_last=test_loader.channels_last, dataset=args.dataset)
    return train_loader, val_loader, test_loader, model, opt, sched, autocast


def sizes(train_loader, val_loader, test_loader):
    """(n_train, n_val, n_test) of a run's splits."""
    return len(train_loader.y), len(val_loader.y) if val_loader else 0, len(test_loader.y)


def snapshot(model, opt, sched, loader):
    """Everything an epoch changes, kept on the device, so that the epoch can be trained again (guard)."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": copy.deepcopy(opt.state_dict()),
            "sched": copy.deepcopy(sched.state_dict()), "rng": loader.generator.get_state()}


def restore(snap, model, opt, sched, loader):
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["opt"])
    sched.load_state_dict(snap["sched"])
    loader.generator.set_state(snap["rng"])


def branch(args, name, model, opt, sched, autocast, train_loader, decision_loader, per_step, k):
    """The counterfactual of a decision: from the state right now (the schedule stepped, the advisor's LR not
    yet applied), k epochs at the schedule's own LR with no advisor, in the same data order; returns
    (loss, accuracy) on the decision split after them. The run's model, optimizer, schedule and data RNG
    come back exactly as they were (restore), so a run trains bit for bit the same with credit on or off."""
    saved = snapshot(model, opt, sched, train_loader)
    try:
        for i in range(k):
            train_loss, *_ = train_epoch(model, opt, train_loader, autocast, per_step)
            if i < k - 1:  # the schedule as the run steps it (plateau: on the validation loss with a holdout)
                metric = evaluate(model, decision_loader, autocast)[0] if name == "plateau" and args.holdout > 0 else train_loss
                schedules.after_epoch(name, sched, metric)
        loss, acc, _ = evaluate(model, decision_loader, autocast)
    finally:
        restore(saved, model, opt, sched, train_loader)
    return loss, acc


def weights_digest(model):
    """sha256 of the final weights (every state_dict tensor's bytes, in order): two runs that say they trained
    the same can be checked bit for bit."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.removeprefix("_orig_mod.").encode())  # compiled or not: the same weights, the same digest
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def warn_about(args, spec, device):
    """Settings that run, but not as one might think: one line each."""
    if spec["every"] and spec["every"] >= args.epochs:
        warnings.warn(f"arm {args.arm!r} asks every {spec['every']} epochs and never after the last one: in "
                      f"{args.epochs} epochs it will make no call")
    elif spec["every"] and args.advice == "async" and spec["every"] > args.epochs - 2:
        warnings.warn(f"arm {args.arm!r} asks every {spec['every']} epochs; under advice async a reply lands two "
                      f"epochs after it is asked at the earliest: in {args.epochs} epochs it will make no call")
    tried = DATASETS[args.dataset]["tried"]
    if any(getattr(args, k) != v for k, v in tried.items()):
        warnings.warn(f"{args.dataset} is best tried with " + " ".join(arms.flag(k, v) for k, v in tried.items())
                      + "; this run trains with " + ", ".join(f"{k} {getattr(args, k):g}" for k in tried) + " as given")
    if args.precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn("this CPU has no native bf16 (AVX512-BF16 or AMX, usable here): bf16 is emulated, ~4x slower "
                      f"than fp32 or worse; {arms.flag('precision', 'auto')} would pick fp32")


def main(args, run_id=None, on_epoch=None):
    """Validated args in, a finished MLflow run out. Raises UsageError/DataError before any run exists.
    A search (search.py) trains its trials here, in its own process: `run_id` is the run it made for the trial,
    and `on_epoch(epoch, metrics)` is called after each epoch is logged; a reason returned stops the run there
    (a pruned trial), and the run says so in its tag `stopped_early`."""
    spec = arms.resolve(args.arm, args.signals, args.every, args.advisor, args.schedule)
    if args.schedule_file != "none":
        spec["schedule"] = "file"
    device = pick_device(args.device)
    warn_about(args, spec, device)
    ask = advisor.make_asker(args, spec)  # checks credentials / the replay run before training starts

    # ---- data: the whole set on the device, uint8
    classes = DATASETS[args.dataset]["classes"]
    train_loader, val_loader, test_loader, model, opt, sched, autocast = prepare(args, device, spec["schedule"])

    # Ctrl-C or SIGTERM (a sweep stopping its children) ends the run KILLED, not RUNNING, and only once.
    with tracking.interrupts_end_runs():
        tag = arms.llm_tag(args.llm_model, args.temperature) if spec["every"] and spec["advisor"] in advisor.LLMS else ""
        run = tracking.open_run(args.experiment, run_name=None if run_id else arms.run_name(args.arm, args.dataset,
                                args.seed, tag), run_id=run_id)
        journal = []  # what the current epoch logs, kept until it is sent: the tracking server may go away
        try:
            tracking.log_params_once(params_of(args, spec, device, *sizes(train_loader, val_loader, test_loader)))
            bad = checksums(args.data_dir, args.dataset)
            md5 = "differs: " + ",".join(bad) if bad else "official" if DATASETS[args.dataset]["files"] else "bundled"
            with tracking.writing():
                mlflow.set_tags({"arm": args.arm, "data_md5": md5, "decisions_saw_test": advisor.saw_test(args, spec)})
                # Tables the UI shows as tables: the advisor's calls; per-class accuracy where there are too many
                # classes for one metric each.
                tracking.declare_tables(([advisor.TABLE] if spec["every"] else [])
                                        + ([CLASS_TABLE] if len(classes) > CLASS_METRICS else []))
                advisor.prepare_run(args, spec)
                if spec["schedule"] == "file":  # what the run followed goes with it
                    mlflow.log_artifact(args.schedule_file)
            test_acc, done = epochs(args, spec, ask, model, opt, sched, autocast, train_loader, test_loader,
                                    val_loader, journal, on_epoch)
            with tracking.writing():
                mlflow.set_tag("weights_sha256", weights_digest(model))
        except BaseException as e:
            why = None if isinstance(e, KeyboardInterrupt) else tracking.server_down(timeout=3)
            if why:  # nothing more can be recorded there: keep it here and say where
                path = tracking.save_unsent(run.info.run_id, journal)
                raise tracking.ServerLost(f"lost the tracking server {mlflow.get_tracking_uri()} ({why}); the run "
                                          f"stays RUNNING there; what it could not send is in {path}") from e
            if isinstance(e, KeyboardInterrupt):
                tracking.end_failed("KILLED", str(e) or "interrupted (Ctrl-C)")
            else:
                tracking.end_failed("FAILED", f"{type(e).__name__}: {e}", e)
            raise
        if ask:
            mlflow.flush_trace_async_logging()  # traces are exported in the background; finish before the run does
        tracking.end_finished()
    links = "" if run_id else (f"\n  view the run: {tracking.ui_link(run.info.experiment_id, run.info.run_id)}\n"
                               f"  view all runs: {tracking.ui_link(run.info.experiment_id)}")  # a search links its own
    print(f"run {run.info.run_id} finished: test_acc {test_acc:.2f}% after {done} epochs{links}", file=sys.stderr)
    return run.info.run_id


def epochs(args, spec, ask, model, opt, sched, autocast, train_loader, test_loader, val_loader, journal, on_epoch=None):
    """The training loop of a run that is open in MLflow; returns the final test accuracy and the epochs trained."""
    name = spec["schedule"]
    per_step = sched if name in schedules.PER_STEP else None
    split = advisor.split_of(args)
    decision_loader = val_loader or test_loader
    history = {"lr": [], "train_loss": [], "grad_norm": [], "class_acc": []}
    # What the run cost, for compare's budget columns: LLM calls (and how many failed), tokens (prompt + output +
    # thinking), USD (from the models file's prices), seconds in requests and seconds waited between attempts,
    # seconds of training + evaluation, seconds of credit branches; and how often the advisor's answer changed the LR.
    budget = {"llm_calls": 0, "llm_failed_calls": 0, "llm_tokens": 0, "llm_cost_usd": 0.0, "llm_seconds": 0.0,
              "llm_retry_seconds": 0.0, "train_seconds": 0.0, "credit_seconds": 0.0, "advisor_changes": 0}
    unpriced = []  # exchanges whose cost is unknown (no token counts)
    advised = None  # (exchange epoch, the scheduler's LR) when the advisor set this epoch's LR
    pending = []  # credit branches waiting for the run to reach their epoch: (decision epoch, due epoch, result)
    class_rows = []  # per-class accuracy by epoch, for data sets with too many classes for a metric each
    # advice async / async_step: the exchange in flight, and the replies applied but not yet recorded
    flight = {"asked": None, "landed": []}
    step = 0

    def count(row):
        budget["llm_calls"] += 1
        budget["llm_failed_calls"] += row["reply"] is None and row["latency_s"] is not None  # every attempt failed
        budget["llm_retry_seconds"] += row["retry_wait_s"] or 0
        budget["llm_seconds"] += (row["latency_s"] or 0) - (row["retry_wait_s"] or 0)
        budget["llm_tokens"] += sum(row[k] or 0 for k in ("prompt_tokens", "output_tokens", "thought_tokens"))
        budget["llm_cost_usd"] += row["cost_usd"] or 0
        budget["advisor_changes"] += row["changed"]
        if row["cost_usd"] is None:
            unpriced.append(row["epoch"])

    def apply_decision(ask_epoch, row, new_lr, scheduler_lr):
        """A decision that applies from the next epoch on: its credit branch (from the state before it), then its LR."""
        nonlocal advised
        if row.get("credit_epochs"):  # before the advisor's LR is applied: the branch keeps the scheduler's
            t1 = time.perf_counter()
            result = branch(args, name, model, opt, sched, autocast, train_loader, decision_loader, per_step,
                            row["credit_epochs"])
            pending.append((ask_epoch, epoch + row["credit_epochs"], result))
            budget["credit_seconds"] += time.perf_counter() - t1
        if row["accepted"]:
            schedules.override(sched, opt, new_lr)
            advised = (ask_epoch, scheduler_lr) if new_lr != scheduler_lr else None

    def land(at_epoch, at_step):
        """async_step: apply the reply in flight from batch `at_step` (in epoch `at_epoch`) on; recorded at the epoch's
        end (guard and credit, which start from an epoch's beginning, are refused with async_step)."""
        p = flight["asked"]
        scheduler_lr = opt.param_groups[0]["lr"]
        decision = advisor.decide(args, p.got, scheduler_lr)
        if decision[2]:
            schedules.override(sched, opt, decision[1])
        flight["asked"] = None
        flight["landed"].append((p, scheduler_lr, decision, (at_epoch, at_step)))

    def record_landed():
        for p, scheduler_lr, decision, at in flight["landed"]:
            count(advisor.answer(args, spec, p.epoch, p.text, p.got, scheduler_lr, decision, history, journal, at,
                                 p.times)[1])
        flight["landed"].clear()

    def before_step(i):  # advice async_step: a reply lands at the first batch after it arrives
        if flight["asked"] and flight["asked"].ready(step + i + 1):
            land(epoch, step + i + 1)

    for epoch in range(1, args.epochs + 1):
        journal.clear()
        t0 = time.perf_counter()
        saved = snapshot(model, opt, sched, train_loader) if advised and args.guard == "rollback" else None
        lr = opt.param_groups[0]["lr"]
        live = f"epoch {epoch:3d}/{args.epochs}  lr {lr:.4g}" if sys.stdout.isatty() else ""
        hook = before_step if args.advice == "async_step" else None
        train_loss, train_acc, grad_norm, lrs = train_epoch(model, opt, train_loader, autocast, per_step, live, hook)
        previous = history["train_loss"][-1] if history["train_loss"] else math.inf
        if saved and not train_loss <= args.guard_factor * previous:  # also catches nan
            # The advisor's LR blew the loss up: train this epoch again from its start at the scheduler's LR.
            restore(saved, model, opt, sched, train_loader)
            schedules.override(sched, opt, advised[1])
            advisor.record_rollback(spec, advised[0], epoch, lr, train_loss, previous, advised[1], args.guard_factor,
                                    journal)
            lr = advised[1]
            train_loss, train_acc, grad_norm, lrs = train_epoch(model, opt, train_loader, autocast, per_step, live)
        train_s = time.perf_counter() - t0
        lr = lrs[0]  # the LR the epoch started at (under async_step a reply may land at its first batch)
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became non-finite ({train_loss}) in epoch {epoch} at lr {lr:g}; "
                                "lower --lr, or set --max-factor or --guard rollback")
        test_loss, test_acc, class_acc = evaluate(model, test_loader, autocast)
        metrics = {"lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "test_loss": test_loss, "test_acc": test_acc, "grad_norm": grad_norm}
        decided = test_loss, test_acc, class_acc  # what decisions may read: with a holdout, never the test set
        if val_loader:
            decided = evaluate(model, val_loader, autocast)
            metrics.update({"val_loss": decided[0], "val_acc": decided[1]})
        few = len(class_acc) <= CLASS_METRICS
        if few:  # one metric per class; else rows of CLASS_TABLE
            metrics.update({f"class_acc/{c}": a for c, a in class_acc.items()})
            if val_loader:
                metrics.update({f"val_class_acc/{c}": a for c, a in decided[2].items()})
        else:
            class_rows += [{"epoch": epoch, "class": c, "test_acc": a,
                            **({"val_acc": decided[2][c]} if val_loader else {})} for c, a in class_acc.items()]
        seconds = time.perf_counter() - t0
        budget["train_seconds"] += seconds
        metrics.update(epoch_seconds=seconds, images_per_second=len(train_loader.y) / train_s)
        journal.append({"epoch": epoch, "metrics": metrics})
        with tracking.writing():
            mlflow.log_metrics(metrics, step=epoch)
            if not few:
                tracking.write_table(class_rows, CLASS_TABLE)
        if per_step or args.advice == "async_step":  # the LR of every batch, step = global batch number (host floats)
            tracking.log_series("lr_step", lrs, first_step=step + 1)
        step += len(lrs)
        print(f"{chr(13) if live else ''}epoch {epoch:3d}/{args.epochs}  lr {lr:.4g}  train_loss {train_loss:.4f}  "
              f"test_acc {test_acc:6.2f}%" + (f"  val_acc {decided[1]:6.2f}%" if val_loader else "") +
              f"  {seconds:6.1f}s", flush=True)
        for key, value in zip(history, (lr, train_loss, grad_norm, decided[2])):
            history[key].append(value)
        record_landed()  # async_step: replies applied during this epoch
        for decision, due, result in [p for p in pending if p[1] == epoch]:
            advisor.record_credit(spec, decision, epoch, decided[:2], result, split, journal)
            pending.remove((decision, due, result))
        stop = on_epoch(epoch, metrics) if on_epoch else None
        if stop:
            with tracking.writing():
                mlflow.set_tag("stopped_early", f"after epoch {epoch} of {args.epochs}: {stop}")
            break

        schedules.after_epoch(name, sched, decided[0] if val_loader else train_loss)  # plateau's metric
        advised = None
        asks = spec["every"] and epoch % spec["every"] == 0
        if args.advice != "sync" and epoch < args.epochs:
            # A reply that arrived during this epoch is applied from the next one, as a sync reply would be; then,
            # with none in flight, ask again, unless no reply could land in time: under async it lands after the
            # next epoch at the earliest.
            if flight["asked"] and flight["asked"].ready(step + 1):
                p, flight["asked"] = flight["asked"], None
                scheduler_lr = opt.param_groups[0]["lr"]
                new_lr, row = advisor.answer(args, spec, p.epoch, p.text, p.got, scheduler_lr,
                                             advisor.decide(args, p.got, scheduler_lr), history, journal,
                                             (epoch + 1, step + 1), p.times)
                count(row)
                apply_decision(p.epoch, row, new_lr, scheduler_lr)
            if asks and epoch <= args.epochs - (2 if args.advice == "async" else 1):
                if flight["asked"]:  # one exchange at a time: the next prompt carries what its reply did
                    print(f"  advisor: the reply to the prompt after epoch {flight['asked'].epoch} is still in flight; "
                          f"not asking after epoch {epoch}", flush=True)
                else:
                    flight["asked"] = advisor.Pending(ask, args, spec, epoch, history, opt.param_groups[0]["lr"])
        # Asking after the final epoch could change nothing, so it is never done.
        elif asks and epoch < args.epochs:
            scheduler_lr = opt.param_groups[0]["lr"]
            new_lr, row = advisor.consult(ask, args, spec, epoch, history, scheduler_lr, journal, step)
            count(row)
            apply_decision(epoch, row, new_lr, scheduler_lr)
    if flight["asked"]:  # never waited for: recorded as not applied, with why
        count(flight["asked"].unapplied(args, spec, history, epoch, journal))
    if spec["every"] and spec["advisor"] in advisor.LLMS:
        if not models.priced(spec["llm"]):  # no price known: the cost is left empty, never 0
            del budget["llm_cost_usd"]
        elif unpriced:  # priced, but some exchanges never said their tokens: the sum is of the others
            with tracking.writing():
                mlflow.set_tag("llm_cost_unknown", "llm_cost_usd leaves out the exchange(s) after epoch(s) "
                               f"{', '.join(map(str, unpriced))}: no token counts (no reply, or none yet)")
    journal[:] = [{"budget": budget}]
    with tracking.writing():
        mlflow.log_metrics(budget)
    return test_acc, epoch
