"""A refactor changes no behaviour: the short runs of tests/digests.py train and record exactly what they did on
the code of REFERENCE (weights_sha256, params, tags, metric histories, artifacts, calls table, prompt and reply
bytes). tests/digests.json holds them as recorded there; tests/digests-*.json as the reference code recorded them on
other machines. On a machine with no recording of its own (another CPU or torch: the numbers differ in their last
bits), the reference code itself is run here, from git, and the code of now compared with it. To record a machine,
so that the test there trains the cases once instead of twice:

    python tests/test_digests.py add
"""

import pytest
import glob
import json
import os
import subprocess
import sys
import tarfile

from conftest import ROOT

# The commit whose behaviour the digests hold: the last one before the training engine was rewritten.
REFERENCE = "c84f585"
RECORDED = os.path.join(ROOT, "tests", "digests.json")
# Settings added since REFERENCE, at the value that trains as REFERENCE did: a run records them as params, and they are
# taken out of its digest before it is compared (at any other value they stay, and the run differs).
ADDED = {"width": "64"}


def record(out, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPENAI_", "GOOGLE_"))}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "digests.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out) as f:
        got = json.load(f)
    for case in got["cases"].values():
        for run in case["runs"].values():
            run["params"] = {k: v for k, v in run["params"].items() if ADDED.get(k, object()) != v}
    return got


def differences(want, got, path=""):
    """Where two digests differ, as readable paths (the first few)."""
    if type(want) is not type(got):
        return [f"{path}: {want!r:.80} != {got!r:.80}"]
    if isinstance(want, dict):
        out = [f"{path}/{k}: only in {'recorded' if k in want else 'now'}" for k in sorted(set(want) ^ set(got))]
        for k in sorted(set(want) & set(got)):
            out += differences(want[k], got[k], f"{path}/{k}")
        return out
    if isinstance(want, list) and len(want) == len(got):
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: {want!r:.80} != {got!r:.80}"]


def recordings():
    """The recordings, the first one's cases those the test must have."""
    out = []
    for path in [RECORDED, *sorted(glob.glob(os.path.join(ROOT, "tests", "digests-*.json")))]:
        with open(path) as f:
            out.append(json.load(f))
    return out


def reference_here(tmp_path):
    """The package as it was at REFERENCE, run on this machine."""
    archive = tmp_path / "reference.tar"
    p = subprocess.run(
        ["git", "-C", ROOT, "archive", "-o", str(archive), REFERENCE, "lradvisor"], capture_output=True, text=True
    )
    assert p.returncode == 0, (
        f"this machine's numerics differ from the recording's, and the reference code "
        f"({REFERENCE}) is not in this clone's history to run here: {p.stderr.strip()}"
    )
    with tarfile.open(archive) as t:
        t.extractall(tmp_path / "reference", filter="data")
    return record(tmp_path / "reference.json", str(tmp_path / "reference"))


@pytest.mark.slow  # starts a process
def test_runs_train_and_record_bit_for_bit_as_before(tmp_path):
    now = record(tmp_path / "now.json")
    assert set(now["cases"]) == set(recordings()[0]["cases"])
    # This machine's recordings: those whose machine says what this one does (digests.json was recorded before
    # the CPU's model was part of it, so it is compared on what it says).
    mine = [
        r for r in recordings() if all(r["machine"].get(k) == v for k, v in now["machine"].items() if k in r["machine"])
    ]
    found = min(
        (differences(r["cases"], now["cases"]) for r in mine), key=len, default=["no recording of this machine"]
    )
    if found:
        # Another machine computes the same runs in other last bits: hold the code to the reference run here. (A
        # machine that no longer reproduces its own recording says so: the reference run differs from it too.)
        reference = reference_here(tmp_path)
        found = differences(reference["cases"], now["cases"])
        drift = differences(mine[0]["cases"], reference["cases"]) if mine else []
        print(
            f"machine {now['machine']} ({len(mine)} recording(s) of its kind); the reference code here differs "
            f"from the first in {len(drift)} place(s)"
        )
    assert not found, "\n".join(found[:20])


def test_the_recorded_cases_exercise_what_they_name():
    """The digests pin down each feature only if the feature happened in the recording."""
    recorded = recordings()[0]["cases"]
    cases = {k: next(iter(v["runs"].values())) for k, v in recorded.items()}
    guard = cases["guard_rollback"]
    assert guard["metrics"]["advisor_rollback"] and any(r["model"] == "guard" for r in guard["calls"])
    assert cases["credit"]["metrics"]["credit_acc"] and cases["credit"]["calls"][0]["credit_epochs"] == 1
    first = cases["replay_async_step"]["calls"][0]  # landed mid-epoch 2, at global batch 5
    assert (first["applied_epoch"], first["applied_step"]) == (2, 5)
    assert [r["applied_epoch"] for r in cases["losses_openai_async"]["calls"]][:2] == [3, 4]
    assert len(recorded["search_tpe"]["runs"]) == 5 and len(recorded["sweep"]["runs"]) == 3  # parents and children


if __name__ == "__main__":
    if sys.argv[1:] != ["add"]:
        raise SystemExit("usage: python tests/test_digests.py add  (records the reference code on this machine)")
    import hashlib
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_here(Path(tmp))
    name = hashlib.sha256(json.dumps(reference["machine"], sort_keys=True).encode()).hexdigest()[:8]
    out = os.path.join(ROOT, "tests", f"digests-{name}.json")
    with open(out, "w") as f:
        json.dump(reference, f, indent=1, sort_keys=True)
    print(f"recorded the reference code ({REFERENCE}) on {reference['machine']} in {out}")
