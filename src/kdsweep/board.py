"""TensorBoard: each run's per-epoch curves, written while it trains (the reference study monitored with it).

The tensorboard package is optional (`pip install -e '.[tensorboard]'`); without it nothing is written.
"""

from __future__ import annotations

import math


def summary_writer(log_dir):
    """A torch SummaryWriter for log_dir, or None where the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


class EpochBoard:
    """One scalar per history column and epoch, under the run folder's tensorboard/."""

    def __init__(self, log_dir):
        self.writer = summary_writer(log_dir)

    def epoch(self, row: dict):
        if self.writer:
            for key, value in row.items():
                if key != "epoch" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()
