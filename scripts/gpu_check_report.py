"""The machine record and the summary of scripts/gpu-check.sh (see there).

    python scripts/gpu_check_report.py machine OUT.json
    python scripts/gpu_check_report.py summary OUT_DIR      -> summary.json there, the table on stdout
"""

import json
import math
import platform
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

EPOCH_IMAGES = 45_000  # CIFAR-10's training split: what one epoch of a sweep run sees


def machine(out):
    import torch
    import torchvision

    record = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "host": platform.node(),
              "gpu": None, "driver": None, "gpu_memory_mib": None}
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
        record["gpu_memory_mib"] = torch.cuda.get_device_properties(0).total_memory // 2**20
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30)
            record["driver"] = query.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


def _tests(folder):
    path = folder / "tests.xml"
    if not path.is_file():
        return None
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _bench(folder, name):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _seconds_per_epoch(entry):
    """Seconds of one 45,000-image epoch per point at the measured rate (a pack's point-images/s)."""
    return EPOCH_IMAGES * entry["pack"] / entry["ours"]["images_per_s"]


def _parity(folder):
    runs = folder / "parity" / "runs"
    if not runs.is_dir():
        return None
    accuracy = {}
    for metrics in sorted(runs.glob("*/metrics.json")):
        student, precision, _ = metrics.parent.name.rsplit("_", 2)
        accuracy.setdefault(student, {}).setdefault(precision, []).append(json.loads(metrics.read_text())["test_acc"])
    out = {}
    for student, by_precision in accuracy.items():
        row = {precision: {"test_acc": values, "mean": statistics.mean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else math.nan}
               for precision, values in by_precision.items()}
        if {"fp32", "bf16"} <= set(row):
            row["bf16_minus_fp32"] = row["bf16"]["mean"] - row["fp32"]["mean"]
        out[student] = row
    return out


def summary(folder):
    folder = Path(folder)
    result = {"machine": json.loads((folder / "machine.json").read_text()) if (folder / "machine.json").is_file() else None,
              "tests": _tests(folder), "rows": [], "determinism": [], "parity": _parity(folder)}
    lines = []
    if result["machine"]:
        m = result["machine"]
        lines.append(f"machine  {m['gpu'] or 'no GPU'}, driver {m['driver']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
                     f"torch {m['torch']}, torchvision {m['torchvision']}, python {m['python']}")
    if result["tests"]:
        t = result["tests"]
        lines.append(f"tests    pytest -m cuda: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped (a skip on a GPU node is a test that did not run)")
    bench, fast = _bench(folder, "bench.json"), _bench(folder, "bench-fast.json")
    if bench:
        lines += ["", f"{'measurement':<52s} {'ours img/s':>11s} {'ref img/s':>10s} {'ours/ref':>8s} "
                      f"{'s/45k ep':>9s} {'floor s':>8s} {'%peak':>6s}"]
        for key, entry in bench["measurements"].items():
            row = {"key": key, "label": entry["label"], "ours_images_per_s": entry["ours"]["images_per_s"],
                   "reference_images_per_s": entry["reference"]["images_per_s"], "ratio": entry["ratio"],
                   "seconds_per_epoch": _seconds_per_epoch(entry) if entry["task"] != "fgsm" else None,
                   "floor_seconds_per_epoch": entry["floor_seconds_per_epoch"],
                   "peak_fraction": entry["ours"]["peak_fraction"]}
            result["rows"].append(row)
            epoch = "-" if row["seconds_per_epoch"] is None else f"{row['seconds_per_epoch']:.2f}"
            lines.append(f"{entry['label'][:52]:<52s} {row['ours_images_per_s']:>11.0f} "
                         f"{row['reference_images_per_s']:>10.0f} {row['ratio']:>8.2f} {epoch:>9s} "
                         f"{row['floor_seconds_per_epoch']:>8.3f} {100 * row['peak_fraction']:>6.1f}")
    if bench and fast:
        lines += ["", "runtime.deterministic: true (default) against false (cuDNN autotuning), ours img/s"]
        for key, entry in fast["measurements"].items():
            if key in bench["measurements"]:
                slow = bench["measurements"][key]["ours"]["images_per_s"]
                quick = entry["ours"]["images_per_s"]
                result["determinism"].append({"key": key, "deterministic": slow, "autotuned": quick,
                                              "cost": quick / slow})
                lines.append(f"  {entry['label'][:52]:<52s} {slow:>9.0f} vs {quick:>9.0f}: "
                             f"deterministic takes {quick / slow:.2f}x the time")
    if result["parity"]:
        lines += ["", "bf16 against fp32 test accuracy (%), digits, same seeds"]
        for student, row in result["parity"].items():
            cells = ", ".join(f"{p} {row[p]['mean']:.2f} ± {row[p]['std']:.2f} (n={len(row[p]['test_acc'])})"
                              for p in ("fp32", "bf16") if p in row)
            diff = f"; bf16 - fp32 {row['bf16_minus_fp32']:+.2f}" if "bf16_minus_fp32" in row else ""
            lines.append(f"  {student}: {cells}{diff}")
    (folder / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    command, target = sys.argv[1:3]
    {"machine": machine, "summary": summary}[command](target)
