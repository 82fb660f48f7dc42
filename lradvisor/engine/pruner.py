"""A search's trial (search/tpe.py) is judged after every epoch: `on_epoch(epoch, metrics)` returns a reason to stop
it there, or None. The run ends after that epoch, FINISHED, and says why in its tag `stopped_early`. After the last
epoch there is nothing left to save: a run that trained all its epochs is complete, whatever the pruner says."""

import mlflow

from lradvisor import tracking
from lradvisor.engine.loop import StopRun
from lradvisor.engine.state import RunState


class Pruner:
    def __init__(self, on_epoch):
        self.on_epoch = on_epoch

    def epoch_end(self, s: RunState) -> None:
        stop = self.on_epoch(s.epoch, s.current.metrics)
        if stop and s.epoch < s.cfg.epochs:
            with tracking.writing():
                mlflow.set_tag("stopped_early", f"after epoch {s.epoch} of {s.cfg.epochs}: {stop}")
            raise StopRun(stop)
