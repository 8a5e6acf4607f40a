#!/usr/bin/env bash
# slurm-scale.sh — the reference study's job counts (config.yaml: 927 jobs, 112 distillation jobs,
# 115 runs' evaluation groups) through the local SLURM cluster with toy-sized work:
#   1. config.yaml's study whole (926 jobs: all but the download, which the bundled digits do not
#      need) at the site profile's cap of 100;
#   2. the same SLURM jobs (112 distill jobs, 115 evaluation groups) with FGSM at one epsilon and PGD
#      off (2 jobs per evaluation group, not 7) at --jobs 20, and the same study locally (--cores 2)
#      for SLURM's overhead.
# scripts/slurm_scale.py says what it measures; docs/slurm-cluster.md has the figures.
#
#   bash scripts/slurm-scale.sh [OUT]        # default OUT: /tmp/kdsweep-scale; about 2 hours here
#
# Needs the venv active and scripts/slurm-cluster.sh's cluster; run it on an otherwise idle machine.
set -euo pipefail
out=${1:-/tmp/kdsweep-scale}
python "$(dirname "$0")/slurm_scale.py" --out "$out" --jobs 100
python "$(dirname "$0")/slurm_scale.py" --out "$out" --jobs 20 --local --light
