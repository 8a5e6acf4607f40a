"""The reference study's job counts through the local SLURM cluster, with toy-sized work (scripts/slurm-scale.sh).

config.yaml's study as it is (ResNet-50 teacher, ResNet-18 and MobileNetV3-small students, the 8 x 7
grid per student: 112 distillation jobs, FGSM and PGD at three epsilons; 926 jobs, config.yaml's 927 but the
download, which the bundled digits do not need), but each job
trains one epoch on 200 of the bundled digits on one CPU thread, so that the whole study fits an
hour of two cores. It runs `snakemake --profile slurm` (a site profile written by `kdsweep
slurm-profile`, job cap 100, in a temporary XDG_CONFIG_HOME) from an empty folder, at the
profile's cap and/or with `--jobs N`, and optionally the same study locally (`--cores 2`) for the
overhead ratio. Each run must end with exit 0, a metrics.json per run, an attack result per run,
attack and epsilon, an evaluation per run and every table. It prints, and writes to OUT/summary.json:
wall seconds, sbatch calls, array sizes, the longest squeue of the study, the controller's own
CPU-seconds, the seconds from "Building DAG of jobs" to the job list, and SLURM's overhead against
the local run.

    python scripts/slurm_scale.py --out /tmp/kdsweep-scale [--jobs 100 20] [--local]

Run it with the venv active, the cluster up (scripts/slurm-cluster.sh) and the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdsweep.config import load_config  # noqa: E402
from kdsweep.layout import Layout  # noqa: E402
from kdsweep.plan import Plan  # noqa: E402

STUDY = """\
# config.yaml's study at toy size: its job counts, one epoch on 200 digits per job.
study: scale
dataset:
  name: digits
  subset: 200
training:
  batch_size: 50
  max_epochs: 1
  eval_batch_size: 500
  bn_momentum: 0.1
augmentation:
  pad: 0
  flip_p: 0.0
  rotation_degrees: 0
runtime:
  device: cpu
  threads: 1
"""


SMOKE = """\
temperatures: [1, 2]
soft_weights: [0.5]
epsilons: [0.1]
attacks: {pgd: null, apgd_ce: null, apgd_dlr: null, apgd_t: null, square: null}
robustness: {headline: [fgsm]}
"""


LIGHT = """\
epsilons: [0.1]
attacks: {pgd: null, apgd_ce: null, apgd_dlr: null, apgd_t: null, square: null}
robustness: {headline: [fgsm]}
"""


def planned_jobs(study_file: Path) -> dict:
    """{rule: count} of snakemake's dry run (the job list it prints)."""
    output = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                             "--configfile", str(ROOT / "config.yaml"), str(study_file), "--workflow-profile", "none"],
                            cwd=study_file.parent, capture_output=True, text=True, check=True).stdout
    table = output.split("Job stats:", 1)[1]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M))
    return {rule: int(n) for rule, n in counts.items()}


class Sampler(threading.Thread):
    """Every 2 s: this study's jobs in squeue (array tasks one by one) and the controller's own CPU time."""

    def __init__(self, pid: int, workdir: Path):
        super().__init__(daemon=True)
        self.pid, self.workdir = pid, str(workdir)
        self.longest_queue, self.cpu_seconds, self.done = 0, 0.0, False
        self.ticks = os.sysconf("SC_CLK_TCK")

    def run(self):
        while not self.done:
            try:
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.cpu_seconds = (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
            queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%Z"], capture_output=True, text=True).stdout
            mine = sum(1 for line in queue.splitlines() if line.split("|", 1)[-1] == self.workdir)
            self.longest_queue = max(self.longest_queue, mine)
            time.sleep(2)


def timestamped(process, log_path: Path) -> dict:
    """Copy the process's output to log_path, each line after the seconds since start; return the
    first time each of a few lines appeared."""
    marks, start = {}, time.monotonic()
    with open(log_path, "w") as log:
        for line in process.stdout:
            now = time.monotonic() - start
            log.write(f"{now:9.2f} {line}")
            for name, text in (("dag", "Building DAG of jobs"), ("job_list", "Job stats:")):
                if name not in marks and text in line:
                    marks[name] = now
    return marks


def run(label: str, out: Path, study_text: str, args: list[str], env: dict, slurm: bool) -> dict:
    work = out / label
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    study = work / "study.yaml"
    study.write_text(study_text)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--configfile", str(ROOT / "config.yaml"), str(study), *args]
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    sampler = Sampler(process.pid, work) if slurm else None
    if sampler:
        sampler.start()
    marks = timestamped(process, work / "snakemake.log")
    status = process.wait()
    wall = time.monotonic() - start
    if sampler:
        sampler.done = True
        sampler.join()
    if status != 0:
        tail = (work / "snakemake.log").read_text(errors="replace")[-4000:]
        raise SystemExit(f"{label}: snakemake ended with status {status}; its output ends:\n{tail}")
    result = {"label": label, "command": " ".join(["snakemake", *command[3:]]), "wall_seconds": round(wall, 1),
              "dag_seconds": round(marks["job_list"] - marks["dag"], 1) if {"dag", "job_list"} <= set(marks) else None}
    result.update(check_outputs(work, study))
    if slurm:
        result.update(sacct_summary(work, since))
        result["longest_squeue"] = sampler.longest_queue
        result["controller_cpu_seconds"] = round(sampler.cpu_seconds, 1)
    return result


def check_outputs(work: Path, study: Path) -> dict:
    """Every run's metrics, attacks and evaluation, and every table, exist (snakemake said so; count them)."""
    config = load_config([str(ROOT / "config.yaml"), str(study)], [])
    plan = Plan(config)
    results = work / plan.results
    runs = [*plan.fixed_runs()]
    missing = [str(path) for run in runs for path in Layout(plan).outputs([run]) if not (work / path).exists()]
    missing += [name for name in Layout(plan).tables() if not (work / name).exists()]
    if missing:
        raise SystemExit(f"{work}: {len(missing)} outputs missing, e.g. {missing[:3]}")
    return {"runs": len(runs), "metrics": len(list(results.glob("runs/*/*/metrics.json"))),
            "attack_results": len(list(results.glob("attacks/*/*/*.json"))),
            "evaluations": len(list(results.glob("evaluation/*/*.json")))}


def sacct_summary(work: Path, since: str) -> dict:
    """SLURM's records of the jobs that ran in work: how many, from how many sbatch calls, array sizes."""
    fields = ["JobID", "JobIDRaw", "State", "WorkDir", "Submit", "Start", "End"]
    lines = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(fields)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    records = [dict(zip(fields, line.split("|"))) for line in lines]
    mine = [r for r in records if Path(r["WorkDir"]) == work]
    calls = {}
    for record in mine:
        calls.setdefault(record["JobID"].split("_")[0], []).append(record)
    arrays = sorted((len(tasks) for tasks in calls.values() if "_" in tasks[0]["JobID"]), reverse=True)
    states = {}
    for record in mine:
        states[record["State"]] = states.get(record["State"], 0) + 1
    return {"slurm_jobs": len(mine), "sbatch_calls": len(calls), "array_sizes": arrays, "states": states}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdsweep-scale"))
    parser.add_argument("--jobs", type=int, nargs="*", default=[100],
                        help="job caps to run at (100: the site profile's own cap, no --jobs)")
    parser.add_argument("--local", action="store_true", help="also run the study locally (--cores 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="a 2 x 1 grid and FGSM at one epsilon instead of config.yaml's: checks this script")
    parser.add_argument("--light", action="store_true",
                        help="FGSM at one epsilon and PGD off: the same SLURM jobs as config.yaml's study (its "
                             "112 distill jobs, 115 evaluation groups), each group of 2 jobs instead of 7")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = STUDY + (SMOKE if args.smoke else "") + (LIGHT if args.light and not args.smoke else "")
    (out / "study.yaml").write_text(study)
    planned = planned_jobs(out / "study.yaml")
    print(f"planned: {planned.get('total')} jobs {planned}", flush=True)

    xdg = out / "xdg"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "KDSWEEP_SLURM_"))}
    # unbuffered: each line of snakemake's output is timed as it comes (the DAG's seconds)
    env.update(XDG_CONFIG_HOME=str(xdg / "user"), XDG_CONFIG_DIRS=str(xdg / "site"), PYTHONUNBUFFERED="1")
    shutil.rmtree(xdg, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "kdsweep", "slurm-profile", "--account", "root", "--jobs", "100"],
                   env=env, check=True)
    summary = {"planned_jobs": planned, "runs": []}
    for cap in args.jobs:
        extra = [] if cap == 100 else ["--jobs", str(cap)]
        label = f"slurm-jobs{cap}" + ("-light" if args.light else "")
        result = run(label, out, study, ["--profile", "slurm", *extra], env, slurm=True)
        summary["runs"].append(result)
        print(json.dumps(result), flush=True)
    if args.local:
        result = run("local" + ("-light" if args.light else ""), out, study, ["--cores", "2"], env, slurm=False)
        summary["runs"].append(result)
        print(json.dumps(result), flush=True)
        for slurm_run in summary["runs"][:-1]:
            slurm_run["wall_vs_local"] = round(slurm_run["wall_seconds"] / result["wall_seconds"], 2)
            slurm_run["extra_seconds_per_slurm_job"] = round(
                (slurm_run["wall_seconds"] - result["wall_seconds"]) / slurm_run["slurm_jobs"], 2)
    (out / ("summary-light.json" if args.light else "summary.json")).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
