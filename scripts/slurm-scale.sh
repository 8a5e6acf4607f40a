#!/usr/bin/env bash
# slurm-scale.sh — the reference study's job counts (config.yaml: 927 jobs, 112 distillation jobs)
# through the local SLURM cluster with toy-sized work, at the site profile's cap of 100 and at
# --jobs 20, then the same study locally for SLURM's overhead (scripts/slurm_scale.py says what it
# measures; docs/slurm-cluster.md has the figures).
#
#   bash scripts/slurm-scale.sh [OUT]        # default OUT: /tmp/kdsweep-scale; about 80 minutes here
#
# Needs the venv active and scripts/slurm-cluster.sh's cluster; run it on an otherwise idle machine.
set -euo pipefail
exec python "$(dirname "$0")/slurm_scale.py" --out "${1:-/tmp/kdsweep-scale}" --jobs 100 20 --local
