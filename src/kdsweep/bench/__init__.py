"""Throughput benchmark: kdsweep's training, distillation and FGSM steps against a plain reference loop.

`python -m kdsweep bench [--quick] [--pack-sizes 1 4 8] [--json PATH] [key=value ...]`; what it
measures, how, and every key of its JSON: docs/bench/README.md.

- command: the command line, the run over every measurement and the printed table;
- measure: both sides of a measurement, timed alternately (ours: the package's own
  `train.train_epoch` over `train.Point`s and `attacks.evaluate_attack`, in the job's runtime);
- reference: the loop written the usual way, the one second implementation;
- floor: FLOPs per image and the device's peak.
"""

from .command import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
