"""`python -m kdsweep bench`: its command line, the run over every measurement, and the printed table."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from .. import io
from ..config import OVERRIDE, load_config
from ..errors import KdsweepError
from ..models import build_model, check_buildable
from ..plan import Run, teachers
from ..runtime import Runtime, environment
from . import floor, measure
from .measure import NUM_CLASSES, Bench

# CIFAR-10's training split of the study (50,000 x 0.9): what one epoch of a sweep run sees.
EPOCH_IMAGES = 45_000

# PyTorch's default arithmetic for fp32 weights on a GPU, which the reference loop runs in.
REFERENCE_PRECISION = "fp32 weights, PyTorch defaults (cuDNN convolutions in TF32 on Ampere and later)"

QUICK = {"batch_size": 32, "eval_batch_size": 32, "images": 64, "warmup": 1, "repeats": 2}
FULL = {"images": 15_000, "warmup": 10, "repeats": 2}  # batch sizes from the config (300, 1000)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="study config (repeatable, merged in order; default ./config.yaml): models, "
                             "batch sizes, optimiser, augmentation, threads")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes for a ~2 minute run on a 2-core CPU (batch {QUICK['batch_size']}, "
                             f"{QUICK['images']} timed images, {QUICK['warmup']} warm-up steps)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when a GPU is visible (default)")
    parser.add_argument("--json", metavar="PATH", help="write the numbers as JSON (keys: see the module docstring)")
    parser.add_argument("--teacher", metavar="MODEL", help="teacher architecture (default: config teacher.model)")
    parser.add_argument("--students", nargs="+", metavar="MODEL",
                        help="student architectures (default: config students)")
    parser.add_argument("--batch-size", type=int, help="training batch (default: config, or quick's)")
    parser.add_argument("--eval-batch-size", type=int, help="FGSM batch (default: config, or quick's)")
    parser.add_argument("--images", type=int,
                        help=f"images per timed epoch (default {FULL['images']}, quick {QUICK['images']})")
    parser.add_argument("--warmup", type=int,
                        help=f"untimed warm-up steps per side (default {FULL['warmup']}, quick {QUICK['warmup']})")
    parser.add_argument("--repeats", type=int, help="timed epochs per side, alternating ours / reference; the fastest "
                                                    f"counts (default {FULL['repeats']}, quick {QUICK['repeats']})")
    parser.add_argument("--image-size", type=int, default=32, help="side of the square images (default 32, CIFAR)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default 2)")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: config runtime.threads; 0 = torch's default)")
    parser.add_argument("--temperature", type=float, help="distillation temperature (default: config temperatures[0]; "
                                                          "throughput does not depend on it)")
    parser.add_argument("--soft-weight", type=float,
                        help="distillation soft weight in (0, 1] (default: config staged.soft_weight)")
    parser.add_argument("--epsilon", type=float, help="FGSM epsilon (default: config epsilons[0])")
    parser.add_argument("--pack-sizes", type=int, nargs="+", default=[1], metavar="K",
                        help="sweep points trained at once per distillation measurement (default: 1)")
    parser.add_argument("--peak-flops", type=float,
                        help="device peak FLOP/s for the floor (default: table on CUDA, measured on CPU)")
    parser.add_argument("--epoch-images", type=int, default=EPOCH_IMAGES,
                        help=f"images per epoch for the floor's seconds per epoch (default {EPOCH_IMAGES})")
    parser.add_argument("--only", nargs="+", choices=["train", "distill", "fgsm"], default=["train", "distill", "fgsm"],
                        help="which kinds of measurement to run (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, models and augmentation (default 0)")
    parser.add_argument("--data", action="store_true",
                        help="measure the imagefolder path instead (kdsweep.bench.data, docs/bench/README.md): its "
                             "loader against torchvision's ImageFolder + DataLoader at --workers, its peak memory on "
                             "a 10k- and a 100k-image tree, and a distillation job as 2 DDP processes against 1")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides after the files, as for every job (e.g. runtime.deterministic=false "
                             "runtime.compile=true): ours runs in the resulting runtime section")
    return parser


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kdsweep bench", description="images per second of this pipeline against a plain PyTorch loop, and the FLOP floor (docs/bench/README.md)")
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value overrides may come anywhere, also after an option that takes several values
    overrides = [arg for arg in argv if OVERRIDE.match(arg)]
    argv = [arg for arg in argv if not OVERRIDE.match(arg)] + (["--", *overrides] if overrides else [])
    args = add_arguments(parser).parse_args(argv)
    try:
        return run(args)
    except KdsweepError as err:
        print(f"kdsweep: error: {err}", file=sys.stderr)
        sys.exit(2)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()




def _machine(device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        device_str = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    else:
        name, device_str = _cpu_name(), "cpu"
    record = environment()
    return {"device": device_str, "name": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            **record["versions"], "host": record["host"]}


def _resolve(args, config):
    """Fill the defaults that come from the config or from --quick; check the numbers."""
    training = config["training"]
    sizes = QUICK if args.quick else FULL
    args.teacher = args.teacher or teachers(config)[0].model
    args.students = args.students or list(config["students"])
    args.batch_size = args.batch_size or sizes.get("batch_size", training["batch_size"])
    args.eval_batch_size = args.eval_batch_size or sizes.get("eval_batch_size", training["eval_batch_size"])
    args.images = args.images or sizes["images"]
    args.warmup = sizes["warmup"] if args.warmup is None else args.warmup
    args.repeats = args.repeats or sizes["repeats"]
    args.temperature = config["temperatures"][0] if args.temperature is None else args.temperature
    args.soft_weight = config["staged"]["soft_weight"] if args.soft_weight is None else args.soft_weight
    args.epsilon = config["epsilons"][0] if args.epsilon is None else args.epsilon
    args.threads = config["runtime"]["threads"] if args.threads is None else args.threads
    for name in [args.teacher, *args.students]:
        check_buildable(name, args.image_size)
    Run.distilled_run("kd", args.students[0], args.seed, "kd",  # T and w within kd's bounds
                      {"temperature": args.temperature, "soft_weight": args.soft_weight})
    for flag, value in (("--batch-size", args.batch_size), ("--eval-batch-size", args.eval_batch_size),
                        ("--images", args.images), ("--repeats", args.repeats), ("--image-size", args.image_size),
                        ("--epoch-images", args.epoch_images)):
        if value < 1:
            raise KdsweepError(f"{flag} {value} must be at least 1")
    if args.warmup < 1:
        raise KdsweepError(f"--warmup {args.warmup} must be at least 1: warm-up steps are never timed")
    if args.workers < 0:
        raise KdsweepError(f"--workers {args.workers} must be 0 or more")
    if args.soft_weight == 0:
        raise KdsweepError("--soft-weight 0 would time no teacher; give a soft weight in (0, 1]")
    if not args.epsilon > 0:
        raise KdsweepError(f"--epsilon {args.epsilon} must be positive, in [0, 1] pixel units (e.g. 0.03)")
    if any(k < 1 for k in args.pack_sizes):
        raise KdsweepError(f"--pack-sizes {args.pack_sizes} must all be at least 1")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    config = load_config(args.config, args.overrides)
    args = _resolve(args, config)
    runtime = Runtime.from_config({**config["runtime"], "device": args.device, "threads": args.threads})
    device = runtime.device
    load_before = list(os.getloadavg())
    machine = _machine(device)
    if getattr(args, "data", False):
        return _run_data(args, runtime, machine, load_before)
    bench = Bench(args, config, runtime)
    settings = {"quick": bool(args.quick), "image_size": bench.image_size, "batch_size": args.batch_size,
                "eval_batch_size": args.eval_batch_size, "images": args.images, "warmup_steps": args.warmup,
                "repeats": args.repeats, "workers": args.workers, "temperature": float(args.temperature),
                "soft_weight": float(args.soft_weight), "epsilon": float(args.epsilon),
                "epoch_images": args.epoch_images, "seed": args.seed, "teacher": args.teacher,
                "students": list(args.students), "pack_sizes": list(args.pack_sizes),
                "data": "synthetic CIFAR-shaped: uniform random uint8 pixels, 10 random labels",
                "precision": runtime.precision, "channels_last": runtime.channels_last,
                "compile": runtime.compile, "deterministic": runtime.record()["deterministic"],
                "reference_precision": REFERENCE_PRECISION if device.type == "cuda" else "fp32"}
    _print_header(machine, settings, load_before)

    peak_start, peak_source = floor.peak(device, args.peak_flops)
    print(f"peak      {peak_start:.3g} FLOP/s ({peak_source})", flush=True)
    names = list(dict.fromkeys([args.teacher, *args.students]))
    counts = floor.flops_per_image(
        {name: build_model(name, NUM_CLASSES, bench.mean, bench.std, image_size=bench.image_size[1]) for name in names},
        bench.image_size, NUM_CLASSES)

    cases = measure.cases(args.teacher, args.students, args.pack_sizes, args.only)
    measurements, skipped, reference_flops = {}, [], {}
    for case in cases:
        if case.task == "fgsm":
            flops = counts[case.model]["fgsm"]
        elif case.task == "distill":
            # Per point-image: each point trains its student; the teacher's forward pass is shared.
            flops = counts[case.model]["train"] + counts[case.teacher]["forward"] / case.pack
        else:
            flops = counts[case.model]["train"]
        # The reference trains one point at a time: its FLOPs per image are the unpacked step's.
        reference_flops[case.key] = flops if case.task != "distill" else (
            counts[case.model]["train"] + counts[case.teacher]["forward"])
        earlier = measurements.get(f"distill:{case.model}") if case.pack > 1 else None
        reused = ({**earlier["reference"], "seconds_each": list(earlier["reference"]["seconds_each"])}
                  if earlier else None)
        ours, reference = bench.time_case(case, reused)
        ours_cpu_per_image = ours["cpu_seconds"] / (case.pack * ours["images"])
        measurements[case.key] = {
            "label": case.label, "task": case.task, "model": case.model, "teacher": case.teacher, "pack": case.pack,
            "flops_per_image": flops, "ours": ours, "reference": reference,
            "ratio": ours["images_per_s"] / reference["images_per_s"],
            "ratio_without_startup": ours["images_per_s"] / reference["images_per_s_without_startup"],
            "cpu_ratio": reference["cpu_seconds"] / reference["images"] / max(ours_cpu_per_image, 1e-12)}
        print(f"measured  {case.label}: ours {ours['images_per_s']:.1f} img/s, reference "
              f"{reference['images_per_s']:.1f} img/s (load {os.getloadavg()[0]:.2f})", flush=True)

    peak = peak_start
    if args.peak_flops is None and device.type == "cpu":
        # Other processes slow a measured peak down: measure again at the end and keep the higher.
        peak_end, _ = floor.peak(device, None)
        peak = max(peak_start, peak_end)
        peak_source += f"; the higher of {peak_start:.3g} (start) and {peak_end:.3g} (end)"
    for key, entry in measurements.items():
        entry["floor_seconds_per_epoch"] = entry["flops_per_image"] * args.epoch_images / peak
        entry["ours"]["peak_fraction"] = entry["flops_per_image"] * entry["ours"]["images_per_s"] / peak
        entry["reference"]["peak_fraction"] = reference_flops[key] * entry["reference"]["images_per_s"] / peak

    result = {"version": 1, "seconds": time.perf_counter() - started, "machine": machine, "settings": settings,
              "peak": {"flops_per_s": peak, "source": peak_source}, "load_before": load_before,
              "load_after": list(os.getloadavg()), "measurements": measurements, "skipped": skipped}
    print(f"\npeak      {peak:.3g} FLOP/s ({peak_source})")
    print(_ROW.format("measurement", "ours img/s", "ref img/s", "ours/ref", "excl.start", "CPU r/o", "GFLOP/img",
                      "floor s/ep", "ours %pk", "ref %pk", "others%"))
    for entry in measurements.values():
        _print_entry(entry)
    for item in skipped:
        print(f"{item['label'][:46]:<46s} skipped (see above)")
    print(f"load avg  after: {_loads(result['load_after'])}   total {result['seconds']:.0f} s")
    print("ours/ref: whole epochs of the same images, the reference's DataLoader start-up included; excl.start: "
          "without it; best of the repeats.\nCPU r/o: reference / ours CPU seconds (workers included). floor s/ep: "
          f"one epoch of {args.epoch_images} images at the peak. others%: CPU share other processes used "
          "during the best epochs.")
    if args.json:
        io.write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


def _run_data(args, runtime, machine, load_before) -> dict:
    """`bench --data` (kdsweep.bench.data): its three measurements, printed and (--json) written."""
    from . import data

    print(f"kdsweep bench --data on {machine['device']}: {machine['name']} ({machine['cpu_count']} logical CPUs); "
          f"torch {machine['torch']}, torchvision {machine['torchvision']}; load avg before: {_loads(load_before)}",
          flush=True)
    result = data.run(args, runtime, log=lambda line: print(line, flush=True))
    result.update(machine=machine, load_before=load_before, load_after=list(os.getloadavg()),
                  settings={"workers": args.workers, "repeats": args.repeats, "quick": bool(args.quick)})
    print(f"load avg  after: {_loads(result['load_after'])}   total {result['seconds']:.0f} s")
    if args.json:
        io.write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


_ROW = "{:<46s} {:>10s} {:>10s} {:>8s} {:>10s} {:>8s} {:>9s} {:>10s} {:>8s} {:>8s} {:>7s}"


def _loads(values):
    return " ".join(f"{x:.2f}" for x in values)


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}"


def _print_entry(e):
    o, r = e["ours"], e["reference"]
    others = [v for v in (o["others_cpu"], r["others_cpu"]) if v is not None]
    print(_ROW.format(e["label"][:46], f"{o['images_per_s']:.1f}", f"{r['images_per_s']:.1f}", f"{e['ratio']:.2f}",
                      f"{e['ratio_without_startup']:.2f}", f"{e['cpu_ratio']:.2f}", f"{e['flops_per_image'] / 1e9:.3f}",
                      f"{e['floor_seconds_per_epoch']:.3g}", f"{100 * o['peak_fraction']:.2f}",
                      f"{100 * r['peak_fraction']:.2f}", _pct(max(others) if others else None)), flush=True)


def _print_header(machine, s, load):
    where = (f"{machine['name']} ({machine['cpu_count']} logical CPUs, torch threads {machine['torch_threads']})"
             if machine["device"] == "cpu" else machine["name"])
    print(f"kdsweep bench on {machine['device']}: {where}")
    print(f"software  torch {machine['torch']}, torchvision {machine['torchvision']}, python {machine['python']}, "
          f"kdsweep {machine['kdsweep']}")
    c, h, w = s["image_size"]
    print(f"data      {s['data']}, {c}x{h}x{w}")
    print(f"sizes     batch {s['batch_size']} (FGSM {s['eval_batch_size']}), {s['images']} images timed per "
          f"measurement and side, after {s['warmup_steps']} untimed warm-up steps; best of {s['repeats']}; "
          f"reference DataLoader workers {s['workers']}")
    print(f"distill   T={s['temperature']:g}, soft weight {s['soft_weight']:g}; FGSM eps={s['epsilon']:g}")
    print(f"ours      {s['precision']}, channels_last {s['channels_last']}, compile {s['compile']}, "
          f"deterministic {s['deterministic']}; reference {s['reference_precision']}, NCHW")
    print(f"load avg  before: {_loads(load)}", flush=True)


if __name__ == "__main__":
    main()
