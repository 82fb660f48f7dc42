"""The commands of the README and of the manual (docs/), as a newcomer types them. Every ```bash block carries a
marker comment before it:

    <!-- test: run -->              run with bash, as one script, in a fresh folder holding the project's MLproject,
                                    conda.yaml and scripts/ and the data/ the offline try-out leaves there, with
                                    stand-in Gemini and OpenAI-compatible servers in the environment and MLflow's
                                    default store in that folder; make_fake_cifar.py writes 2 images per class
                                    instead of the README's count and `mlflow run -P epochs=N` trains 1 epoch
                                    (the two changes: the suite's time), `mlflow ui` is not started (a server)
    <!-- test: check -->            each lradvisor / mlflow run command is parsed and validated by the CLI's own
                                    checks from the checkout (files they name are read there), not run; a block's
                                    compare names a sweep id its sweep gave, and its --data-dir is what its
                                    make_fake_cifar.py wrote
    <!-- test: skip (why) -->       not runnable here (a download, a server, a cluster); says why

A block without a marker fails the test, so none is added untested by accident.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from fake_gemini import FakeGemini, reply
from fake_openai import FakeOpenAI, chat

BLOCK = re.compile(r"(?:<!-- test: (\w+)(?: \(([^)]*)\))? -->\n)?```bash\n(.*?)```", re.S)


PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
)


def blocks():
    """(mode, why, text) of every bash block of the README and the manual's pages, in order."""
    out = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            out += [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(f.read())]
    return out


def commands(text):
    """Logical lines (backslash continuations joined), comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_every_bash_block_is_marked():
    found = blocks()
    assert len(found) >= 8
    unmarked = [text.splitlines()[0] for mode, _, text in found if mode not in ("run", "check", "skip")]
    assert unmarked == [], "README bash blocks without a <!-- test: run|check|skip (why) --> marker"
    assert all(why for mode, why, _ in found if mode == "skip"), "a skipped block says why"


def _argv(cmd):
    """lradvisor / mlflow-run command line -> (CLI argv) or None for other commands."""
    words = shlex.split(cmd)
    if words[:1] == ["lradvisor"]:
        return words[1:]
    if words[:3] == ["mlflow", "run", "."]:
        with open(os.path.join(ROOT, "MLproject")) as f:
            project = yaml.safe_load(f)
        entry = words[words.index("-e") + 1] if "-e" in words else "main"
        params = dict(w.split("=", 1) for a, w in zip(words, words[1:]) if a == "-P")
        unknown = set(params) - set(project["entry_points"][entry]["parameters"])
        assert not unknown, f"{cmd}: not parameters of {entry}: {unknown}"
        command = {"main": "train"}.get(entry, entry)
        return [command] + [x for k, v in params.items() for x in (f"--{k.replace('_', '-')}", v)]
    return None


@pytest.mark.parametrize("index", [i for i, (mode, _, _) in enumerate(blocks()) if mode == "check"])
def test_check_blocks_parse_and_agree(index, monkeypatch):
    from lradvisor.cli import parse

    monkeypatch.chdir(ROOT)  # files the commands name (scripts/models.example.yaml) are read, nothing is written
    text = blocks()[index][2]
    ids, written, parsed = {}, set(), 0
    for cmd in commands(text):
        words = shlex.split(cmd)
        if words[:2] == ["python", "scripts/make_fake_cifar.py"]:
            written.add(words[words.index("--out") + 1])
            continue
        argv = _argv(cmd)
        if argv is None:
            continue
        command, cfg = parse(argv)  # the CLI's own parsing and checks, short of the server and the data
        parsed += 1
        data_dir = {"train": lambda: cfg.data_dir, "sweep": lambda: cfg.train.data_dir}.get(command)
        if data_dir and written:
            assert data_dir() in written, f"{cmd}: --data-dir {data_dir()} is not what the block wrote: {written}"
        if command in ("sweep", "compare") and cfg.sweep_id != "none":
            ids.setdefault(command, set()).add(cfg.sweep_id)
    assert parsed, f"a check block holds no lradvisor or mlflow run command to check: {text[:80]!r}"
    if "sweep" in ids:  # a compare after a sweep in one block reads what that sweep made
        assert ids.get("compare", set()) <= ids["sweep"], (
            f"compare reads sweep ids {ids.get('compare')}, the block's sweep makes {ids['sweep']}"
        )


def run_blocks():
    """Indices of the run blocks, each text once: the README's try-out is a guide's first step too, word for word, and
    running it twice proves nothing more (one epoch of digits at width 64: ~60 s on 2 cores)."""
    seen, out = set(), []
    for i, (mode, _, text) in enumerate(blocks()):
        if mode == "run" and text not in seen:
            seen.add(text)
            out.append(i)
    return out


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize("index", run_blocks())
def test_run_blocks_run_as_written(index, tmp_path):
    text = blocks()[index][2]
    assert commands(text), "a run block holds no command"
    for name in ("MLproject", "conda.yaml", "scripts"):
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, tmp_path / name)
    subprocess.run(
        [
            sys.executable,
            "scripts/make_fake_cifar.py",
            "--out",
            "data",
            "--train-per-class",
            "2",
            "--test-per-class",
            "2",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPENAI_", "GOOGLE_", "GEMINI_"))}
    with FakeGemini([reply("The learning rate should be 0.05.")]) as g, FakeOpenAI([chat("LR 0.05")]) as o:
        env.update(g.env(), **o.env(), MLFLOW_DISABLE_TELEMETRY="true")
        script = "\n".join(["set -euo pipefail"] + [c for c in commands(text) if not c.startswith("mlflow ui")])
        script = re.sub(r"--(train|test)-per-class \d+", r"--\1-per-class 2", script)
        script = re.sub(r"-P epochs=\d+", "-P epochs=1", script)
        p = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{script}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"


def test_the_parameter_table_is_the_configs():
    """The manual's table of parameters names every setting of a run (config.TrainConfig) with its default."""
    from lradvisor.config import TrainConfig, settings

    with open(os.path.join(ROOT, "docs", "reference", "parameters.md")) as f:
        text = f.read()
    table = text[text.index("| parameter | default | meaning |") :].split("\n\n")[0].splitlines()[2:]
    shown = {}
    for row in table:
        cells = row.split("|")
        names, defaults = re.findall(r"`(\w+)`", cells[1]), [d.strip(" `") for d in cells[2].split(",")]
        for i, name in enumerate(names):
            shown[name] = defaults[i] if len(defaults) == len(names) else defaults[0]
    defaults = {f.name: f.default for f in settings(TrainConfig) if f.name != "experiment"}  # experiment: in the prose
    assert set(shown) == set(defaults)
    for name, default in defaults.items():
        same = float(shown[name]) == default if isinstance(default, (int, float)) else shown[name] == default
        assert same, f"{name}: the README says {shown[name]}, the default is {default!r}"


def test_the_manual_generates_every_setting_of_every_command():
    """docs/hooks.py writes the reference of every setting from lradvisor/config/ where a page asks for it."""
    import importlib.util
    from lradvisor.config import BenchConfig, CompareConfig, SearchConfig, SweepConfig, TrainConfig, settings
    from lradvisor.config.decisions import DecisionsConfig, ScoreConfig

    spec = importlib.util.spec_from_file_location("hooks", os.path.join(ROOT, "docs", "hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown("before\n" + hooks.MARK + "\nafter", None, None, None)
    assert hooks.MARK not in page and page.startswith("before") and page.endswith("after")
    for cls in (TrainConfig, SweepConfig, SearchConfig, DecisionsConfig, ScoreConfig, CompareConfig, BenchConfig):
        for f in settings(cls):
            assert f"| `{f.name}` |" in page, (cls.__name__, f.name)
    with open(os.path.join(ROOT, "docs", "reference", "parameters.md")) as f:
        assert hooks.MARK in f.read()


def test_the_readmes_links_reach_pages_and_headings_that_exist():
    """mkdocs --strict checks the manual's links; this checks the front door's, which mkdocs does not build."""
    with open(os.path.join(ROOT, "README.md")) as f:
        links = re.findall(r"\]\(((?:docs|scripts|tests|lradvisor)/[^)#\s]+)(?:#([^)\s]+))?\)", f.read())
    assert len(links) >= 8
    for path, anchor in links:
        assert os.path.exists(os.path.join(ROOT, path)), f"README links to {path}, which does not exist"
        if anchor:
            with open(os.path.join(ROOT, path)) as f:
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", f.read(), flags=re.S), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to {path}#{anchor}; its headings give {sorted(slugs)}"
