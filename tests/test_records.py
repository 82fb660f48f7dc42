"""Records you can trust: the holes found when the tool was tried as a new user and under faults, each shut
through the real entry points (the CLI, `mlflow run`, a real `mlflow server`)."""

import contextlib
import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import mlflow
import numpy as np
import pytest
import torch

from lradvisor.data.registry import FOLDER

from conftest import FEW_IMAGES, ROOT, cli, free_port, history, mlflow_run, mlflow_server, runs_of


def one_line(capsys, says):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    return err[0]


# ---- 1, 11, 18: flags and refusals ------------------------------------------------------------------------


def test_no_abbreviated_flags_and_unknown_mlflow_params_are_refused(cifar_dir, experiment, capsys):
    assert cli("train", "--step", 1, "--data-dir", cifar_dir, "--experiment", experiment) == 2
    one_line(capsys, "unrecognized arguments: --step 1")
    assert runs_of(experiment) == []

    p = mlflow_run(experiment, data_dir=cifar_dir, epochs=1, step=1)
    assert p.returncode != 0
    assert "unknown parameter step (given as -P)" in p.stderr
    (run,) = runs_of(experiment)  # the one run `mlflow run` makes before our code starts: it says why
    assert run.info.status == "FAILED" and "unknown parameter step" in run.data.tags["failure_reason"]
    assert run.data.tags["arm"] == "baseline"
    assert "''" not in run.data.params.values()  # unset string parameters are words, not a literal ''
    assert run.data.params["signals"] == "preset" and run.data.params["replay_run_id"] == "none"


def test_missing_key_under_mlflow_run_names_the_mlflow_parameter(cifar_dir, experiment):
    env = {k: "" for k in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI")}
    p = mlflow_run(experiment, env=env, arm="losses", data_dir=cifar_dir, epochs=1)
    assert p.returncode != 0 and "or use -P advisor=replay" in p.stderr
    (run,) = runs_of(experiment)
    assert run.info.status == "FAILED" and "GOOGLE_API_KEY" in run.data.tags["failure_reason"]
    assert run.data.tags["arm"] == "losses"


def test_help_version_and_bad_arm_lists(cifar_dir, experiment, capsys):
    assert cli("--version") == 0
    assert capsys.readouterr().out.strip().startswith("lradvisor ")
    assert cli("train", "--help") == 0
    assert "(default: 20)" in capsys.readouterr().out
    assert cli("sweep", "--arms", "baseline,losss,cadense3", "--data-dir", cifar_dir, "--experiment", experiment) == 2
    line = one_line(
        capsys, "unknown arms 'losss' (did you mean losses?), 'cadense3' (did you mean cadence3?); valid arms: baseline"
    )
    assert (
        line.endswith("groups: published, ladder, controls, lrfree")
        and "search_tpe, search_random, search_pbt" not in line
    )
    assert cli("train", "--arm", "radom", "--data-dir", cifar_dir, "--experiment", experiment) == 2
    one_line(capsys, "unknown arm 'radom' (did you mean random_control?)")
    assert cli("train", "--arm", "xyz", "--data-dir", cifar_dir, "--experiment", experiment) == 2
    assert "did you mean" not in one_line(capsys, "unknown arm 'xyz'; valid arms: baseline")


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["train", "--arm", "nope"],
        ["sweep", "--arms", "nope"],
        ["train", "--lr", "nan"],
        ["sweep", "--seeds", "x"],
    ],
)
def test_answers_and_refusals_import_neither_torch_nor_mlflow(argv):
    """What takes seconds to import (torch ~4 s, mlflow ~1.5 s, minutes on a loaded machine) is not needed to
    print the version or the help, or to refuse a parameter."""
    code = (
        f"import sys\nfrom lradvisor.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'mlflow', 'numpy') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr


def test_sweep_checks_parameters_before_reading_the_data(cifar_dir, tracking_uri):
    p = subprocess.run(
        [sys.executable, "-m", "lradvisor", "sweep", "--lr", "nan", "--data-dir", cifar_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "lradvisor sweep: error: lr must be a finite number, got nan"
    ]  # no md5 warning


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--lr", "inf"], "lr must be a finite number"),
        (["--gamma", "nan"], "gamma must be a finite number"),
        (["--llm-timeout", 0.0004], "llm_timeout must be >= 1"),
    ],
)
def test_values_that_pass_comparisons_but_misbehave(flags, says, cifar_dir, experiment, capsys):
    assert cli("train", "--data-dir", cifar_dir, *flags, "--experiment", experiment) == 2
    one_line(capsys, says)
    assert runs_of(experiment) == []


# ---- 5, 7: the sweep checks everything before any run exists ----------------------------------------------


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--sweep-id", "af' and tags.arm = 'baseline"], "invalid sweep_id"),
        (["--sweep-id", "a/b"], "invalid sweep_id"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--data-dir", "/nonexistent/cifar"], "cifar10 not found"),
    ],
)
def test_sweep_refuses_before_any_run(flags, says, cifar_dir, experiment, capsys):
    argv = ["sweep", "--arms", "baseline", "--data-dir", cifar_dir, *flags, "--experiment", experiment]
    assert cli(*argv) == 2
    one_line(capsys, says)
    assert runs_of(experiment) == []


def test_compare_refuses_ids_that_would_inject_into_filters(tracking_uri, capsys, tmp_path):
    assert cli("compare", "--sweep-id", "x' or tags.arm != 'y", "--output-dir", tmp_path) == 2
    one_line(capsys, "invalid sweep_id")
    assert cli("compare", "--run-ids", "abc,d'e", "--output-dir", tmp_path) == 2
    one_line(capsys, "invalid run id")


def test_compare_refuses_a_baseline_that_is_neither_an_arm_nor_a_row(cifar_dir, experiment, capsys, tmp_path):
    assert cli("train", "--data-dir", cifar_dir, "--epochs", 1, *FEW_IMAGES, "--experiment", experiment) == 0
    capsys.readouterr()
    assert cli("compare", "--experiment", experiment, "--baseline", "nosuch", "--output-dir", tmp_path) == 2
    one_line(capsys, "unknown baseline 'nosuch': neither an arm nor a row of experiment")
    assert not (tmp_path / "results.md").exists()


# ---- 6: batch files are validated when read ---------------------------------------------------------------


def _corrupt(src, dst, name, change):
    shutil.copytree(src, dst, dirs_exist_ok=True)
    path = os.path.join(dst, FOLDER, name)
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    change(d)
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d.update(data=d["data"][:, :1000]), "must be a uint8 array of shape (N, 3072)"),
        (lambda d: d.update(data=d["data"].astype(np.float32)), "must be a uint8 array"),
        (lambda d: d["labels"].__setitem__(0, 57), "labels must lie in 0..9, found"),
        (lambda d: d.update(labels=d["labels"][:-3]), "labels for"),
        (lambda d: d.update(labels=["cat"] * len(d["labels"])), "'labels' must be a list of integers"),
        (lambda d: d.update(data=d["data"][:0], labels=[]), "is an empty batch (0 images)"),
    ],
)
def test_bad_batch_files_are_one_line_naming_the_file(change, says, cifar_dir, tmp_path, experiment, capsys):
    _corrupt(cifar_dir, tmp_path, "data_batch_2", change)
    assert cli("train", "--data-dir", tmp_path, "--epochs", 1, "--experiment", experiment) == 2
    line = one_line(capsys, says)
    assert "data_batch_2" in line
    assert runs_of(experiment) == []


# ---- 4: a tracking server that is not there, or goes away -------------------------------------------------


def test_dead_tracking_server_is_one_line_within_seconds(cifar_dir, tracking_uri, capsys):
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
    try:
        t0 = time.monotonic()
        for command in (
            ["train", "--data-dir", cifar_dir],
            ["sweep", "--data-dir", cifar_dir],
            ["compare", "--sweep-id", "x"],
        ):
            assert cli(*command) == 2
            one_line(capsys, "cannot reach the tracking server http://127.0.0.1:")
        assert time.monotonic() - t0 < 30
    finally:
        mlflow.set_tracking_uri(tracking_uri)


def test_an_artifact_store_that_cannot_be_written_says_what_was_recorded(tiny_cifar, experiment, tmp_path, capsys):
    """Issue 28: 19. A full disk (here an artifact root that is a file: every artifact fails, the database does not)
    printed 'could not record the failure' although FAILED and the reason were recorded. Say exactly which."""
    blocked = tmp_path / "artifacts-is-a-file"
    blocked.write_text("")
    mlflow.create_experiment(experiment, artifact_location=blocked.as_uri())
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"lr": [0.01]}))
    capsys.readouterr()
    assert (
        cli("train", "--schedule-file", schedule, "--epochs", 1, "--data-dir", tiny_cifar, "--experiment", experiment)
        == 1
    )
    (run,) = runs_of(experiment)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"].startswith(
        ("NotADirectoryError", "FileExistsError")
    )
    out = capsys.readouterr()
    assert out.err.strip().splitlines()[-1].startswith("lradvisor train: error: NotADirectoryError: ")
    (said,) = [line for line in out.out.splitlines() if line.startswith("lradvisor: recorded")]
    assert said.startswith(
        "lradvisor: recorded in MLflow: the status FAILED, the tag failure_reason; "
        "not recorded: the traceback (error.txt): "
    )


def test_server_lost_mid_run_stops_and_keeps_what_was_not_sent(tiny_cifar, tmp_path):
    # Retries shortened for the test; the defaults (4 retries, 20 s timeout) bound it to ~2 minutes.
    with mlflow_server(tmp_path) as (url, server):
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": url,
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lradvisor",
                "train",
                "--data-dir",
                tiny_cifar,
                "--epochs",
                "50",
                "--batch-size",
                "8",
                "--experiment",
                "lost",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().startswith("epoch   1/50")
            os.killpg(server.pid, signal.SIGKILL)
            t0 = time.monotonic()
            assert proc.wait(timeout=120) == 75  # ServerLost: the sweep knows its child lost the server
            assert time.monotonic() - t0 < 60
        finally:
            proc.kill()
    err = [line for line in proc.stderr.read().strip().splitlines() if not line.startswith("warning: cifar10 files")]
    assert len(err) == 1 and "lost the tracking server" in err[0], err
    (path,) = glob.glob(str(tmp_path / "lradvisor-unsent-*.json"))
    assert path in err[0]
    kept = json.load(open(path))
    assert kept["tracking_uri"] == url and kept["records"][0]["metrics"]["lr"] == 0.1


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_a_sweep_rides_out_a_tracking_server_restart(launcher, tiny_cifar, tmp_path, request):
    """The server is killed while a sweep's first child trains: the child stops (its own exit code), the sweep says
    it waits, and once a server answers again on the same store it ends that run FAILED saying why, trains the job
    again and finishes the sweep: nothing left RUNNING, every job FINISHED once. On Ray both jobs train at once, so
    the second may lose the server too (or start after the restart)."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    # On Ray the kill waits for MLflow to show the epochs (below): 40 narrow ones (~0.1 s each) leave it seconds;
    # locally it follows the console's line at once, and 8 at full width (~0.7 s each) keep it training till then.
    epochs, width = (8, 64) if launcher == "local" else (40, 16)
    argv = ["sweep", "--arms", "baseline,cosine", "--seeds", 0, "--epochs", epochs, "--batch-size", 8, "--width", width]
    argv += ["--data-dir", tiny_cifar, "--experiment", f"rides-{launcher}", "--sweep-id", "r1"]
    if launcher == "ray":
        pytest.importorskip("ray")  # the optional extra; the README's test command installs it
        argv += ["--launcher", "ray", "--ray-address", request.getfixturevalue("ray_head")]
    seen = []

    def until(text):
        for line in proc.stdout:
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in: " + "".join(seen))

    def trained(url, epochs):
        """Until a child has logged this many epochs. (The console of a task on a separate Ray head reaches the
        sweep's terminal late or not at all, so on Ray the test watches MLflow instead.)"""
        client = mlflow.MlflowClient(url)
        for _ in range(600):
            exp = client.get_experiment_by_name(f"rides-{launcher}")
            runs = client.search_runs([exp.experiment_id], "tags.role = 'arm'") if exp else []
            if any(len(client.get_metric_history(r.info.run_id, "train_loss")) >= epochs for r in runs):
                return
            time.sleep(0.5)
        raise AssertionError(f"no child of the sweep logged {epochs} epochs in 300 s")

    proc = None
    try:
        with mlflow_server(tmp_path) as (url, server):
            port = int(url.rsplit(":", 1)[1])
            proc = subprocess.Popen(
                [sys.executable, "-m", "lradvisor", *map(str, argv)],
                cwd=tmp_path,
                env={**env, "MLFLOW_TRACKING_URI": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if launcher == "local":
                until("[baseline-s0] epoch   2/8")
            else:
                trained(url, 2)
            os.killpg(server.pid, signal.SIGKILL)
            until("waiting up to 600 s for it to answer again")
        with mlflow_server(tmp_path, port=port):  # the restart: the same store, the same address
            assert proc.wait(timeout=600) == 0, "".join(seen) + proc.stdout.read()
            out = "".join(seen) + proc.stdout.read()
            assert "the tracking server answers again" in out and "2 finished, 0 failed" in out, out
            client = mlflow.MlflowClient(url)
            exp = client.get_experiment_by_name(f"rides-{launcher}")
            runs = client.search_runs([exp.experiment_id])
            got = sorted((r.info.run_name, r.info.status, r.data.tags.get("failure_reason", "")) for r in runs)
            if launcher == "ray":
                again = ("FAILED", "lost its tracking server mid-run; trained again")
                assert [g for g in got if g[1] == "FINISHED"] == [
                    (n, "FINISHED", "") for n in ("baseline-s0", "cosine-s0", "sweep-r1")
                ], got
                assert any(g[1:] == again for g in got) and all(g[1:] == again for g in got if g[1] != "FINISHED"), got
                return
            assert got == [
                ("baseline-s0", "FAILED", "lost its tracking server mid-run; trained again"),
                ("baseline-s0", "FINISHED", ""),
                ("cosine-s0", "FINISHED", ""),
                ("sweep-r1", "FINISHED", ""),
            ], got
    finally:
        if proc is not None:
            proc.kill()


# ---- 2, 3: compare keeps configurations apart and logs only its own files --------------------------------


def test_compare_never_pools_configurations_and_logs_only_its_files(cifar_dir, experiment, tmp_path, capsys):
    for epochs, step in ((1, 5), (2, 5), (2, 1)):
        assert (
            cli(
                "train",
                "--data-dir",
                cifar_dir,
                "--epochs",
                epochs,
                "--step-size",
                step,
                *FEW_IMAGES,
                "--experiment",
                experiment,
            )
            == 0
        )
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay_from_an_earlier_compare.png").write_bytes(b"old")
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert (
        cli(
            "compare", "--experiment", experiment, "--output-dir", out, "--baseline", "baseline [epochs=2, step_size=5]"
        )
        == 0
    )
    printed = capsys.readouterr().out
    for label in (
        "baseline [epochs=1, step_size=5]",
        "baseline [epochs=2, step_size=5]",
        "baseline [epochs=2, step_size=1]",
    ):
        assert f"| {label} | 0 |" in printed

    assert not (out / "overlay_from_an_earlier_compare.png").exists() and (out / "my_notes.txt").exists()
    client = mlflow.MlflowClient()
    (cmp,) = [r for r in runs_of(experiment) if r.data.tags.get("role") == "compare"]
    assert cmp.data.tags["mlflow.runName"] == f"compare-{experiment}"
    logged = {a.path for a in client.list_artifacts(cmp.info.run_id)}
    assert logged == {p.name for p in out.iterdir() if p.name != "my_notes.txt"} | {"compared_runs.json"}
    compared = client.load_table(cmp.info.experiment_id, "compared_runs.json", run_ids=[cmp.info.run_id])
    trained = {r.info.run_id for r in runs_of(experiment) if r.data.tags.get("role") != "compare"}
    assert set(compared["run_id"]) == trained and len(compared) == 3


# ---- 9, 10, 12: runs end KILLED on signals, and keep their consoles ---------------------------------------


def _read_until(stream, *texts, limit=120):
    """What the process printed until every one of texts has shown (or it ended, or limit seconds passed)."""
    t0 = time.monotonic()
    seen, left = [], set(texts)
    while time.monotonic() - t0 < limit:
        line = stream.readline()
        seen.append(line)
        left = {t for t in left if t not in line}
        if not left or not line:
            return "".join(seen)
    return "".join(seen)


def test_sigterm_to_a_sweep_ends_everything_killed_and_keeps_the_logs(tiny_cifar, experiment):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lradvisor",
            "sweep",
            "--arms",
            "baseline",
            "--seeds",
            "0,1",
            "--parallel",
            "2",
            "--sweep-id",
            "term",
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
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # both children training (each has recorded its tags by then; under load the second may start late)
        seen = _read_until(proc.stdout, "[baseline-s0] epoch   1/100", "[baseline-s1] epoch   1/100")
        assert "[baseline-s0] epoch   1/100" in seen and "[baseline-s1] epoch   1/100" in seen, seen
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]  # read on, as a terminal would
        assert proc.returncode == 130, rest
    finally:
        proc.kill()
    assert "Traceback" not in seen + rest
    runs = runs_of(experiment)
    status = sorted((r.data.tags.get("role"), r.info.status) for r in runs)
    assert status == [("arm", "KILLED"), ("arm", "KILLED"), ("sweep", "KILLED")]
    # Said at once, before the children's own "the run was ended KILLED" lines, and the sweep's line last (issue 28,
    # 17: those children's lines were read as the sweep's while its run was still ending).
    stopping = rest.index("sweep term: stopping (terminated (SIGTERM)): 2 run(s) in training end KILLED")
    lines = rest.splitlines()
    children = [line for line in lines if "] lradvisor train: interrupted;" in line]
    assert len(children) == 2 and stopping < rest.index(children[0]), rest
    assert lines[-1] == "lradvisor sweep: interrupted; the run was ended KILLED", rest
    for child in [r for r in runs if r.data.tags["role"] == "arm"]:
        (log,) = [a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id) if a.path.endswith(".log")]
        assert log == f"baseline-s{child.data.tags['seed']}.log"
        assert child.data.tags["data_md5"].startswith("differs: data_batch_1,")  # each run records it ...
    assert glob.glob(os.path.join(tempfile.gettempdir(), "lradvisor-sweep-term-*")) == []
    assert (seen + rest).count("do not match the official md5") == 1  # ... the sweep says it once


def test_ctrl_c_under_mlflow_run_ends_the_run_killed(tiny_cifar, experiment):
    cmd = [
        "mlflow",
        "run",
        ROOT,
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
        "-P",
        f"data_dir={tiny_cifar}",
        "-P",
        "epochs=100",
        "-P",
        "batch_size=8",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    proc = subprocess.Popen(
        cmd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = _read_until(proc.stdout, "epoch   1/100")
        assert "epoch   1/100" in seen, seen
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        proc.wait(timeout=120)
    finally:
        proc.kill()
    for _ in range(50):  # MLflow's launcher marks it FAILED as it exits; our helper puts KILLED back right after
        (run,) = runs_of(experiment)
        if run.info.status == "KILLED":
            break
        time.sleep(0.2)
    assert run.info.status == "KILLED", run.data.tags.get("failure_reason")
    assert run.data.tags["failure_reason"] == "interrupted (Ctrl-C)"
    assert history(run.info.run_id, "train_loss")[0][0] == 1


# ---- 18: a Ctrl-C and a SIGTERM at once ------------------------------------------------------------------------


def test_a_ctrl_c_and_a_sigterm_together_end_the_run_killed_in_one_line(tiny_cifar, experiment):
    """A sweep's child gets the terminal's Ctrl-C and its launcher's SIGTERM within microseconds. Both are pending
    when the first one's handler runs (made certain here by sending them to a stopped process); the second must be
    ignored quietly, not print CPython's "OSError: Signal 15 ignored due to race condition" traceback."""
    cmd = [sys.executable, "-m", "lradvisor", "train", "--data-dir", tiny_cifar, "--epochs", "100", "--batch-size", "8"]
    proc = subprocess.Popen(
        [*cmd, "--experiment", experiment],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = _read_until(proc.stdout, "epoch   1/100")
        assert "epoch   1/100" in seen, seen
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGCONT)  # both are delivered before it runs another instruction
        rest = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130 and rest.strip() == "lradvisor train: interrupted; the run was ended KILLED", rest
    (run,) = runs_of(experiment)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted (Ctrl-C)"


# ---- 13: the link printed opens the runs table ------------------------------------------------------------


def test_train_prints_the_runs_table_link_and_names_the_run(cifar_dir, experiment, capsys):
    assert (
        cli("train", "--data-dir", cifar_dir, "--epochs", 1, "--seed", 3, *FEW_IMAGES, "--experiment", experiment) == 0
    )
    (run,) = runs_of(experiment)
    err = capsys.readouterr().err
    assert f"/#/experiments/{run.info.experiment_id}?workflowType=machine_learning" in err
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning" in err
    assert run.info.run_name == "baseline-s3"  # as a sweep names its runs


# ---- the launcher goes away; a dead tracking server under `mlflow run` ------------------------------------


def test_sigterm_to_mlflow_runs_own_pid_ends_the_run_killed(tiny_cifar, experiment):
    """What a job scheduler does: SIGTERM to `mlflow run` alone. The launcher exits at once; its child notices
    and ends the run KILLED instead of training on as an orphan."""
    cmd = [
        "mlflow",
        "run",
        ROOT,
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
        "-P",
        f"data_dir={tiny_cifar}",
        "-P",
        "epochs=100",
        "-P",
        "batch_size=8",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    proc = subprocess.Popen(
        cmd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    rest = []
    try:
        seen = _read_until(proc.stdout, "epoch   1/100")
        assert "epoch   1/100" in seen, seen
        proc.send_signal(signal.SIGTERM)  # the launcher only, not its process group
        proc.wait(timeout=60)
        reader = threading.Thread(target=lambda: rest.append(proc.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout=60)  # EOF once the child, which shares the pipe, has exited too
        assert not reader.is_alive(), "the training child outlived its launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = runs_of(experiment)
    assert run.info.status == "KILLED", seen + "".join(rest)
    assert run.data.tags["failure_reason"].startswith("the process that started this run (mlflow, pid ")
    assert run.data.tags["mlflow.runName"] == "baseline-s0"


def test_dead_tracking_server_under_mlflow_run_fails_fast_with_the_documented_settings(cifar_dir):
    """MLflow's own launcher makes the run before our code starts, retrying for ~5 minutes by default; the README's
    remedy (these two variables in the environment of `mlflow run`) makes that seconds."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")},
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    t0 = time.monotonic()
    p = subprocess.run(
        ["mlflow", "run", ROOT, "--env-manager", "local", "-P", f"data_dir={cifar_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    assert "Connection refused" in p.stderr or "Max retries exceeded" in p.stderr, p.stderr[-2000:]


@pytest.mark.slow  # starts a process
def test_explicit_bf16_on_a_cpu_that_emulates_it_says_so(tmp_path):
    """The warning comes before anything is read. ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY below AVX-512 make
    this process a CPU without native bf16, whatever CPU runs the test."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    (tmp_path / FOLDER).mkdir()  # no batch files: refused after the warning, before any run
    argv = [
        sys.executable,
        "-m",
        "lradvisor",
        "train",
        "--precision",
        "bf16",
        "--device",
        "cpu",
        "--data-dir",
        str(tmp_path),
    ]
    err = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120).stderr.strip().splitlines()
    assert err[0].startswith("warning: this CPU has no native bf16") and "--precision auto would pick fp32" in err[0]
    assert "lacks data_batch_1" in err[1]
    from lradvisor.engine.device import native_bf16

    if native_bf16(torch.device("cpu")):  # and where it is native, no such word
        err = subprocess.run(argv, capture_output=True, text=True, timeout=120).stderr
        assert "no native bf16" not in err and "lacks data_batch_1" in err


@pytest.mark.slow  # starts processes
def test_commands_started_together_on_a_fresh_store_make_it_once(tmp_path):
    """Two commands touching a fresh local sqlite store at once raced in MLflow's migration of it: one died in a
    60-line alembic traceback. Now both get as far as their own answer (here: there is no such experiment)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    argv = [sys.executable, "-m", "lradvisor", "compare", "--experiment", "nosuch", "--output-dir", tmp_path / "out"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and err.strip().splitlines() == [
            f"lradvisor compare: error: no experiment named 'nosuch' on sqlite:///{tmp_path}/mlflow.db"
        ], err[-3000:]
