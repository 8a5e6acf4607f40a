"""Throughput benchmark: kdsweep's training, distillation and FGSM steps against a plain reference loop.

`python -m kdsweep bench [--quick] [--pack-sizes 1 4 8] [--json PATH] [key=value ...]`; what it
measures, how, and every key of its JSON: docs/bench/README.md.

- command: the command line, the run over every measurement and the printed table;
- measure: both sides of a measurement, timed alternately (ours: the package's own
  `train.train_epoch` over `train.Point`s and `attacks.evaluate.evaluate_attack`, in the job's runtime);
- reference: the loop written the usual way, the one second implementation;
- floor: FLOPs per image and the device's peak;
- data: `bench --data`, the imagefolder path and several processes per job.
"""
