"""One arm end to end: the CLI and `mlflow run`, the StepLR trajectory, determinism, honest run endings."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lradvisor.cli import build_parser
from lradvisor.data.registry import CLASSES
from lradvisor.engine.device import native_bf16

from conftest import HALF_OF_80, ROOT, cli, history, mlflow_run, runs_of

METRICS = [
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "grad_norm",
    "epoch_seconds",
    "images_per_second",
] + [f"class_acc/{c}" for c in CLASSES]


def test_lr_trajectory_equals_steplr(tiny_cifar, experiment):
    assert cli("train", "--data-dir", tiny_cifar, "--epochs", 20, "--batch-size", 20, "--experiment", experiment) == 0
    (run,) = runs_of(experiment)
    logged = [v for _, v in history(run.info.run_id, "lr")]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)
    ref = []
    for _ in range(20):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert logged == pytest.approx(ref, rel=1e-12)
    assert logged[0] == 0.1 and logged[5] == pytest.approx(0.01) and logged[19] == pytest.approx(1e-4)


def test_same_seed_same_run_other_seed_differs(cifar_dir, experiment):
    for seed in (1, 1, 2):
        assert (
            cli(
                "train", "--data-dir", cifar_dir, "--epochs", 2, "--seed", seed, *HALF_OF_80, "--experiment", experiment
            )
            == 0
        )
    runs = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    curves = [[history(r.info.run_id, k) for k in ("train_loss", "grad_norm", "test_loss")] for r in runs]
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--arm", "nope"], "valid arms: baseline, cadence3"),
        (["--epochs", 0], "epochs must be > 0"),
        (["--epochs", "abc"], "invalid int value"),
        (["--subset-ratio", 1.5], "subset_ratio must be in (0, 1]"),
        (["--batch-size", 0], "batch_size must be > 0"),
        (["--lr", -0.1], "lr must be > 0"),
        (["--model", "vgg"], "valid models: resnet18, resnet18_imagenet_stem"),
        (["--width", 0], "width must be > 0 (64 = ResNet-18 as published), got 0"),
        (["--signals", "losses,vibes"], "comma-separated list of losses, lr_history"),
    ],
)
def test_bad_input_is_one_line_and_no_run(flags, says, cifar_dir, experiment, capsys):
    assert cli("train", "--data-dir", cifar_dir, *flags, "--experiment", experiment) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert runs_of(experiment) == []


def test_mlflow_run_end_to_end(cifar_dir, experiment):
    p = mlflow_run(experiment, data_dir=cifar_dir, epochs=2, batch_size=16, subset_ratio=0.5)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = runs_of(experiment)
    assert run.info.status == "FINISHED"
    for key in METRICS:
        assert [s for s, _ in history(run.info.run_id, key)] == [1, 2], key
    params = run.data.params
    assert params["arm"] == "baseline" and params["epochs"] == "2" and params["device_name"] == "cpu"
    assert params["torch_version"] == torch.__version__ and params["momentum"] == "0.9"
    assert run.data.tags["arm"] == "baseline"
    assert "epoch   2/2" in p.stdout


def test_mlflow_run_bad_input_fails_the_run_it_made(cifar_dir, experiment):
    p = mlflow_run(experiment, data_dir=cifar_dir, arm="nope")
    assert p.returncode != 0
    assert "unknown arm 'nope'; valid arms: baseline" in p.stderr  # no arm is like it: no guess
    assert [r.info.status for r in runs_of(experiment)] == ["FAILED"]


def test_diverging_loss_ends_failed_with_reason(cifar_dir, experiment, capsys):
    assert (
        cli("train", "--data-dir", cifar_dir, "--epochs", 3, "--lr", 1e12, *HALF_OF_80, "--experiment", experiment) == 1
    )
    assert "non-finite" in capsys.readouterr().err
    (run,) = runs_of(experiment)
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["failure_reason"]


def test_interrupt_mid_epoch_ends_killed_and_keeps_what_was_logged(tiny_cifar, experiment):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lradvisor",
            "train",
            "--data-dir",
            tiny_cifar,
            "--epochs",
            "100",
            "--batch-size",
            "8",
            "--experiment",
            experiment,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the first epoch's line: it is logged, and epoch 2 is under way
        assert line.startswith("epoch   1/100"), line + proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    (run,) = runs_of(experiment)
    assert run.info.status == "KILLED" and "interrupt" in run.data.tags["failure_reason"]
    assert history(run.info.run_id, "train_loss")[0][0] == 1


@pytest.mark.parametrize(
    "entry_point, command, cli_only",
    [
        ("main", "train", {"experiment"}),
        ("sweep", "sweep", {"experiment"}),
        ("search", "search", {"experiment"}),
        ("decisions", "decisions build", set()),
        ("score", "decisions score", set()),
        ("compare", "compare", set()),
    ],
)
def test_mlproject_matches_cli(entry_point, command, cli_only):
    """MLproject files rot silently: every parameter is a CLI flag with the same default, and is passed on."""
    with open(os.path.join(ROOT, "MLproject")) as f:
        spec = yaml.safe_load(f)
    ep = spec["entry_points"][entry_point]
    sub = build_parser()
    for word in command.split():  # `decisions build`: a subcommand's subcommand
        sub = sub._subparsers._group_actions[0].choices[word]
    flags = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help" and a.dest not in cli_only}
    assert set(ep["parameters"]) == set(flags)
    for name, p in ep["parameters"].items():
        assert str(p["default"]) == str(flags[name].default), name
        assert f"{flags[name].option_strings[0]} {{{name}}}" in ep["command"], name
    assert ep["command"].startswith(f"python -m lradvisor {command} ")


def test_conda_env_lists_the_package_dependencies():
    with open(os.path.join(ROOT, "MLproject")) as f:
        assert yaml.safe_load(f)["conda_env"] == "conda.yaml"
    with open(os.path.join(ROOT, "conda.yaml")) as f:
        conda_pip = next(d for d in yaml.safe_load(f)["dependencies"] if isinstance(d, dict))["pip"]
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert conda_pip == tomllib.load(f)["project"]["dependencies"]


@pytest.mark.slow  # starts a process
def test_benchmark_script_prints_both_loops(tmp_path):
    """Smoke test only: speed is measured by running the script, never asserted in tests."""
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "benchmark.py"),
            "--train-size",
            "48",
            "--test-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ours, ref = [json.loads(line) for line in p.stdout.splitlines()]
    assert ours["loop"] == "ours" and ref["loop"] == "reference" and ours["data"] == "synthetic"
    assert ours["train_images_per_s"] > 0 and ours["speedup_vs_reference"] > 0 and ref["device"] == "cpu"


def test_precision_auto_is_recorded_and_is_bf16_where_the_cpu_has_it(cifar_dir, experiment):
    from lradvisor.engine.device import native_bf16

    assert cli("train", "--data-dir", cifar_dir, "--epochs", 1, *HALF_OF_80, "--experiment", experiment) == 0
    (run,) = runs_of(experiment)
    native = native_bf16(torch.device("cpu"))
    assert run.data.params["precision_used"] == ("bf16" if native else "fp32")
    assert run.data.params["channels_last_used"] == ("1" if native else "0")


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--precision", "fp16"], "valid: auto, fp32, bf16"),
        (["--channels-last", "yes"], "valid: auto, 0, 1"),
    ],
)
def test_bad_precision_flags(flags, says, cifar_dir, experiment, capsys):
    assert cli("train", "--data-dir", cifar_dir, *flags, "--experiment", experiment) == 2
    assert says in capsys.readouterr().err


def _bf16_runs(tmp_path, experiment, per_class, runs, epochs, *flags):
    """Train `runs` [(precision, seed)] on a fresh synthetic set (per_class > 0) or on digits (per_class 0, its
    settings); return each run's curves."""
    data = tmp_path / "data"
    if per_class and not data.exists():
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
                "--out",
                str(data),
                "--train-per-class",
                str(per_class),
                "--test-per-class",
                str(per_class // 2),
            ],
            check=True,
            capture_output=True,
        )
    task = ["--data-dir", data, "--lr", 0.05, "--step-size", 2] if per_class else ["--dataset", "digits", "--lr", 0.02]
    out = []
    for precision, seed in runs:
        assert (
            cli(
                "train",
                "--precision",
                precision,
                "--seed",
                seed,
                *task,
                "--epochs",
                epochs,
                "--batch-size",
                16,
                "--experiment",
                experiment,
                *flags,
            )
            == 0
        )
        run = max(runs_of(experiment), key=lambda r: r.info.start_time)
        assert run.data.params["precision_used"] == precision
        out.append([history(run.info.run_id, k) for k in ("train_loss", "grad_norm", "test_acc")])
    return out


# Where bf16 is emulated (no AVX512-BF16 or AMX: e.g. an AMD EPYC without AVX-512) it runs ~4-16x slower than
# fp32, so these tests size their bf16 work by the CPU they find (the suite took 25+ minutes otherwise).
EMULATED = not native_bf16(torch.device("cpu"))


def test_bf16_same_seed_same_run(tmp_path, experiment):
    # Where bf16 is emulated: one step of 10 images (the first step is the slowest) and 10 test images.
    per_class, epochs, flags = (2, 1, ["--subset-ratio", 0.5]) if EMULATED else (16, 3, [])
    a, b = _bf16_runs(tmp_path, experiment, per_class, [("bf16", 2), ("bf16", 2)], epochs, *flags, "--width", 16)
    assert a == b


@pytest.mark.skipif(
    EMULATED,
    reason="this CPU emulates bf16 (no AVX512-BF16 or AMX usable here): the 2 bf16 epochs "
    "this comparison needs would take minutes; it runs where bf16 is native",
)
def test_bf16_learns_like_fp32(tmp_path, experiment):
    """On real images (digits, 3 epochs at width 16, the same seed), bf16 and fp32 both learn and end close together.
    (Before that digits is still in its steep, seed-sensitive phase: at width 16 after two epochs, 89.7 % in bf16 and
    73.8 % in fp32 on Intel's AMX; at width 64, after one, 43-69 %.)"""
    finals = _bf16_runs(tmp_path, experiment, 0, [("bf16", 0), ("fp32", 0)], 3, "--width", 16)
    final = {"bf16": finals[0][2][-1][1], "fp32": finals[1][2][-1][1]}
    assert min(final.values()) > 80, final  # chance is 10 %
    assert abs(final["bf16"] - final["fp32"]) < 8, final  # 91.1 and 93.9 % (Intel AMX, 2026-12-03)
