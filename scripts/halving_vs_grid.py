"""Successive halving against the grid, measured (docs/performance.md).

Runs one study twice through Snakemake on this machine, `sweep: grid` (study <name>-grid) and `sweep: halving`
(study <name>), each in two phases timed apart: the teacher and baselines (`--until train`), then the sweep
and the rest (the grid's packs; halving's rungs, decisions and survivors; the finished runs' evaluations,
tables, figures). Then it compares, per student and KD method:
- the epochs trained by the distillation (each run's last epoch, summed); the seconds its training loops
  took (per pack, from the first rung to the end, its longest point's `train_seconds`: a pack's epoch is
  shared by its points); and the second phase's CPU-seconds (snakemake and its jobs) and wall seconds,
  halving against the grid;
- halving's chosen point (best mean validation accuracy over the seeds among its finalists, as the tables and
  the confirmation choose) against the grid's (the same rule over every point);
- the test-accuracy regret of halving's choice (the grid's mean test accuracy of the grid's best point minus
  that of halving's choice), beside the seed-to-seed standard deviation of the test accuracy;
- exactness: every finalist's metrics.json numbers against the grid's run of the same point.

    python scripts/halving_vs_grid.py [--configfile studies/halving.yaml] [--cores 2] [--out FILE.json]

Run it with the venv active from the checkout, on an otherwise idle machine. Nothing here is a test: it
prints what it measured and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdsweep.config import load_config  # noqa: E402
from kdsweep.records import JobRecord, Metrics, point_of  # noqa: E402

# (`--until distill` would not do for the sweep: Snakemake stops it at the first rung's checkpoint)
PHASES = (("teacher and baselines", ["--until", "train"]), ("the sweep, its evaluations and tables", []))
COMPARED = ("epochs", "best_epoch", "val_acc", "val_loss", "test_acc", "test_loss")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_study(configfile, overrides, cores) -> list[dict]:
    phases = []
    for name, extra in PHASES:
        command = ["snakemake", "--cores", str(cores), "--configfile", configfile, "--quiet", "rules",
                   *(["--config", *overrides] if overrides else []), *extra]
        cpu, started = children_cpu(), time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        phases.append({"phase": name, "wall_s": time.perf_counter() - started, "cpu_s": children_cpu() - cpu})
        print(f"  {name}: {phases[-1]['wall_s']:.0f} s wall, {phases[-1]['cpu_s']:.0f} CPU-s", flush=True)
    return phases


def training_seconds(results: Path) -> float:
    """The seconds the distillation's training loops took: per pack (all its stages), its longest point's."""
    packs = {}
    for path in sorted((results / "packs").glob("*.json")):
        pack = re.sub(r"_(rung\d+|final)$", "", path.stem)
        for entry in JobRecord.read(path).points:
            packs[pack] = max(packs.get(pack, 0.0), entry.train_seconds or 0.0)
    return sum(packs.values())


def distilled(results: Path) -> dict:
    """{(student, method, point, seed): {"epochs": last epoch trained, "metrics": Metrics or None}}."""
    runs = {}
    for path in sorted((results / "packs").glob("*.json")):
        for entry in JobRecord.read(path).points:
            method, hparams = point_of(entry)
            folder = Path(entry.run)
            metrics_path = ROOT / folder / "metrics.json"
            key = (_student(folder.name), method, hparams, entry.seed)
            known = runs.setdefault(key, {"epochs": 0, "metrics": None})
            known["epochs"] = max(known["epochs"], entry.epochs or 0)
            if metrics_path.is_file():
                known["metrics"] = Metrics.read(metrics_path)
                known["epochs"] = max(known["epochs"], known["metrics"].epochs)
    return runs


STUDENTS: list[str] = []


def _student(name: str) -> str:
    return next(student for student in sorted(STUDENTS, key=len, reverse=True) if name.startswith(student + "_"))


def best(runs: dict, student, method) -> tuple:
    """The point with the best mean validation accuracy over its seeds among the finished ones (ties: first)."""
    means = {}
    for (s, m, point, _), run in runs.items():
        if s == student and m == method and run["metrics"] is not None:
            means.setdefault(point, []).append(run["metrics"].val_acc)
    return max(means, key=lambda point: statistics.mean(means[point]))


def test_accs(runs, student, method, point) -> list[float]:
    return [run["metrics"].test_acc for (s, m, p, _), run in sorted(runs.items(), key=lambda item: item[0][3])
            if (s, m, p) == (student, method, point)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="studies/halving.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("halving_vs_grid.json"))
    parser.add_argument("--compare-only", action="store_true",
                        help="compare the two studies' results as they are, with the timings of --out (no run)")
    args = parser.parse_args(argv)
    config = load_config([ROOT / "config.yaml", ROOT / args.configfile])
    STUDENTS.extend(config["students"])
    if config["sweep"] != "halving":
        sys.exit(f"{args.configfile} has sweep: {config['sweep']}; give a study with sweep: halving")
    name = config["study"]
    studies = {"grid": (f"{name}-grid", [f"study={name}-grid", "sweep=grid"]), "halving": (name, [])}
    timing = json.loads(args.out.read_text())["timing"] if args.compare_only else {}
    for search, (study, overrides) in studies.items():
        if args.compare_only:
            continue
        print(f"{search}: results/{study}", flush=True)
        timing[search] = run_study(args.configfile, overrides, args.cores)
    grid, halving = (distilled(ROOT / "results" / studies[s][0]) for s in ("grid", "halving"))
    epochs = {search: sum(run["epochs"] for run in runs.values()) for search, runs in (("grid", grid),
                                                                                       ("halving", halving))}
    sweep = {search: timing[search][-1] for search in timing}
    seconds = {search: training_seconds(ROOT / "results" / studies[search][0]) for search in studies}
    mismatched = [key for key, run in halving.items() if run["metrics"] is not None and any(
        getattr(run["metrics"], field) != getattr(grid[key]["metrics"], field) for field in COMPARED)]
    finalists = sum(run["metrics"] is not None for run in halving.values())
    choices = []
    for student in config["students"]:
        for method in sorted({m for (s, m, _, _) in grid if s == student}):
            grid_best, halving_best = best(grid, student, method), best(halving, student, method)
            grid_acc = statistics.mean(test_accs(grid, student, method, grid_best))
            chosen_acc = statistics.mean(test_accs(grid, student, method, halving_best))
            seed_sds = [statistics.stdev(test_accs(grid, student, method, point))
                        for point in {p for (s, m, p, _) in grid if (s, m) == (student, method)}]
            choices.append({
                "student": student, "method": method, "grid_best": dict(grid_best), "halving_best": dict(halving_best),
                "same_point": grid_best == halving_best, "grid_best_test_acc": grid_acc,
                "halving_choice_test_acc": chosen_acc, "regret": grid_acc - chosen_acc,
                "grid_best_seed_sd": statistics.stdev(test_accs(grid, student, method, grid_best)),
                "median_seed_sd": statistics.median(seed_sds)})
    summary = {
        "configfile": args.configfile, "cores": args.cores, "timing": timing,
        "points": len(grid), "finalists": finalists, "epochs": epochs,
        "epochs_ratio": epochs["halving"] / epochs["grid"],
        "training_seconds": seconds, "training_seconds_ratio": seconds["halving"] / seconds["grid"],
        "sweep_cpu_ratio": sweep["halving"]["cpu_s"] / sweep["grid"]["cpu_s"],
        "sweep_wall_ratio": sweep["halving"]["wall_s"] / sweep["grid"]["wall_s"],
        "finalists_equal_to_grid": not mismatched, "mismatched": [str(key) for key in mismatched],
        "choices": choices,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"runs (point x seed): {len(grid)}; halving finished {finalists}; their metrics equal the grid's: "
          f"{not mismatched}")
    print(f"epochs: halving {epochs['halving']} / grid {epochs['grid']} = {summary['epochs_ratio']:.3f}")
    print(f"training seconds: halving {seconds['halving']:.0f} / grid {seconds['grid']:.0f} = "
          f"{summary['training_seconds_ratio']:.3f}")
    print(f"the sweep and the rest, CPU-s: halving {sweep['halving']['cpu_s']:.0f} / grid {sweep['grid']['cpu_s']:.0f} "
          f"= {summary['sweep_cpu_ratio']:.3f}; wall {summary['sweep_wall_ratio']:.3f}")
    for choice in choices:
        print(f"{choice['student']} {choice['method']}: grid {choice['grid_best']} ({choice['grid_best_test_acc']:.2f}%), "
              f"halving {choice['halving_best']} ({choice['halving_choice_test_acc']:.2f}%): regret "
              f"{choice['regret']:.2f} points; seed SD {choice['grid_best_seed_sd']:.2f} (best point), "
              f"{choice['median_seed_sd']:.2f} (median point)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
