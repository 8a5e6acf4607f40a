#!/usr/bin/env bash
# slurm-overhead.sh — the demo study run twice, back to back, from scratch: on this machine
# (`snakemake --profile profiles/demo`) and through the local SLURM cluster
# (`snakemake --profile profiles/slurm --configfile studies/demo.yaml`). Prints both wall times,
# their ratio, and where the SLURM run's time went (from sacct: time in the queue, time in jobs).
#
#   bash scripts/slurm-overhead.sh [CHECKOUT]     # default: this checkout; needs scripts/slurm-cluster.sh's cluster
#
# It deletes CHECKOUT/results/demo (twice). Run it with the venv active, on an otherwise idle machine.
set -euo pipefail
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$checkout"
export PYTHONPATH="$checkout/src${PYTHONPATH:+:$PYTHONPATH}"
export KDSWEEP_SLURM_ACCOUNT=${KDSWEEP_SLURM_ACCOUNT:-root}
log=$(mktemp -d)

run() {  # run NAME snakemake-args...: wall seconds of a run from scratch
  local name=$1; shift
  rm -rf results/demo .snakemake/incomplete
  local start=$(date +%s.%N)
  snakemake "$@" >"$log/$name.log" 2>&1 || { tail -40 "$log/$name.log"; exit 1; }
  echo "$(date +%s.%N) - $start" | bc
}

local_s=$(run local --profile profiles/demo)
since=$(date +%Y-%m-%dT%H:%M:%S)
slurm_s=$(run slurm --profile profiles/slurm --configfile studies/demo.yaml)
printf 'checkout %s (%s)\n' "$checkout" "$(git -C "$checkout" rev-parse --short HEAD)"
printf 'profiles/demo:  %6.0f s\nprofiles/slurm: %6.0f s\nratio:          %6.2f\n' "$local_s" "$slurm_s" \
  "$(echo "$slurm_s / $local_s" | bc -l)"
# sacct of the SLURM run's jobs: submissions, summed time pending and running, summed CPU seconds
sacct -X -n -P -S "$since" -o JobID,Submit,Start,End,Elapsed,WorkDir --noconvert | awk -F'|' -v dir="$checkout" '
  function t(s) { gsub(/[-T:]/, " ", s); return mktime(s) }
  $6 == dir { n++; split($1, id, "_"); calls[id[1]] = 1; wait += t($3) - t($2); run += t($4) - t($3) }
  END { for (c in calls) m++
        printf "SLURM jobs: %d from %d sbatch calls (an array is one); summed seconds pending %d, running %d\n", n, m, wait, run }'
echo "logs: $log"
