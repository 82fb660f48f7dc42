"""Riding out a tracking-server restart mid-sweep, one rule for both launchers (launch.py, ray_launch.py): a child that
lost the server exits 75 (ServerLost.code); its launcher waits for the server, ends the cut-short run FAILED with
TRAINED_AGAIN as its reason and trains the job again, twice at most."""

import os
import time

import mlflow

from lradvisor import tracking
from lradvisor.errors import ServerLost


def wait_for_server(what):
    """After a child lost the tracking server (a restart, an outage): wait for it to answer again, saying so, up to
    LRADVISOR_SERVER_WAIT seconds (default 600); ServerLost when it does not come back."""
    limit, t0 = float(os.environ.get("LRADVISOR_SERVER_WAIT", "600")), time.monotonic()
    why = tracking.server_down(timeout=3)
    if why:
        print(f"sweep: {what} lost the tracking server ({why}); waiting up to {limit:.0f} s for it to answer again")
    while why:
        if time.monotonic() - t0 > limit:
            raise ServerLost(
                f"the tracking server {mlflow.get_tracking_uri()} did not answer for {limit:.0f} s "
                f"({why}); this sweep's runs that were training stay RUNNING there: start the same sweep again "
                "once it answers (it ends them KILLED and trains what is missing)"
            )
        time.sleep(2)
        why = tracking.server_down(timeout=3)
        if not why:
            print(f"sweep: the tracking server answers again after {time.monotonic() - t0:.0f} s; going on")


TRAINED_AGAIN = "lost its tracking server mid-run; trained again"  # the reason on the run a restart cut short


def train_again(job, code, retried):
    """Whether a child's job is trained again: it stopped because it lost the tracking server (exit 75: a restart,
    not its failure) and has been trained again fewer than twice. Waits for the server first (wait_for_server)."""
    if code != ServerLost.code or retried.count(job) >= 2:
        return False
    wait_for_server(job.name)
    retried.append(job)
    return True
