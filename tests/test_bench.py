"""The throughput benchmark end to end at toy sizes: every documented JSON key, positive numbers.

Speeds and ratios are not asserted: timings on a shared CI machine are noise.
"""

import argparse
import json
from pathlib import Path

import pytest
from conftest import built_once

from kdsweep.bench import command, floor
from kdsweep.errors import KdsweepError

ROOT = Path(__file__).resolve().parents[1]

TOP = {"version", "seconds", "machine", "settings", "peak", "load_before", "load_after", "measurements", "skipped"}
MACHINE = {"device", "name", "cpu_count", "torch_threads", "torch", "torchvision", "python", "kdsweep", "cuda",
           "cudnn", "host"}
SETTINGS = {"quick", "image_size", "batch_size", "eval_batch_size", "images", "warmup_steps", "repeats", "workers",
            "deterministic", "reference_precision",
            "temperature", "soft_weight", "epsilon", "epoch_images", "seed", "teacher", "students", "pack_sizes",
            "data", "precision", "channels_last", "compile"}
ENTRY = {"label", "task", "model", "teacher", "pack", "flops_per_image", "floor_seconds_per_epoch", "ours",
         "reference", "ratio", "ratio_without_startup", "cpu_ratio"}
SIDE = {"images", "seconds", "seconds_each", "images_per_s", "peak_fraction", "others_cpu", "cpu_seconds"}
REFERENCE = SIDE | {"loader_startup_s", "images_per_s_without_startup"}


def parse(argv):
    """The bench's arguments wired as kdsweep.cli wires them: a `bench` subcommand."""
    parser = argparse.ArgumentParser(prog="kdsweep")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bench")
    command.add_arguments(p)
    p.set_defaults(func=command.run)
    return parser.parse_args(["bench", *argv])


TINY = ["--config", str(ROOT / "config.yaml"), "--device", "cpu", "--teacher", "resnet18",
        "--students", "mobilenet_v3_small", "--image-size", "16", "--batch-size", "8", "--eval-batch-size", "8",
        "--images", "16", "--warmup", "1", "--repeats", "2", "--workers", "1", "--threads", "1"]


def _bench(folder):
    out = folder / "bench.json"
    args = parse([*TINY, "--pack-sizes", "1", "4", "--peak-flops", "1e11", "--json", str(out)])
    returned = args.func(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(returned))  # what it returns, it wrote


@pytest.fixture(scope="session")
def result(tmp_path_factory):
    """A tiny bench's JSON, run once per test run (conftest.built_once)."""
    return json.loads((built_once(tmp_path_factory, "bench", _bench) / "bench.json").read_text())


def positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_every_documented_key_is_there(result):
    assert set(result) == TOP
    assert set(result["machine"]) == MACHINE
    assert set(result["settings"]) == SETTINGS
    assert set(result["peak"]) == {"flops_per_s", "source"}
    assert result["peak"] == {"flops_per_s": 1e11, "source": "--peak-flops"}
    assert result["machine"]["device"] == "cpu"
    assert result["settings"]["image_size"] == [3, 16, 16] and result["settings"]["batch_size"] == 8
    assert result["settings"]["precision"] == "fp32" and result["settings"]["channels_last"] is False


def test_every_measurement_has_positive_numbers(result):
    expected = {"train:resnet18", "train:mobilenet_v3_small", "distill:mobilenet_v3_small",
                "distill:mobilenet_v3_small:pack4", "fgsm:mobilenet_v3_small", "fgsm:resnet18"}
    assert set(result["measurements"]) == expected
    for key, entry in result["measurements"].items():
        assert set(entry) == ENTRY, key
        assert set(entry["ours"]) == SIDE and set(entry["reference"]) == REFERENCE, key
        for name in ("flops_per_image", "floor_seconds_per_epoch", "ratio", "ratio_without_startup", "cpu_ratio",
                     "pack"):
            assert positive(entry[name]), (key, name)
        for side in (entry["ours"], entry["reference"]):
            for name, value in side.items():
                if name == "others_cpu":
                    assert value is None or 0 <= value <= 1
                elif name == "seconds_each":
                    assert len(value) == 2 and all(positive(v) for v in value) and min(value) == side["seconds"]
                else:
                    assert positive(value), (key, name, value)
            assert side["images"] == 16
        assert entry["teacher"] == ("resnet18" if entry["task"] == "distill" else None)
    assert positive(result["peak"]["flops_per_s"]) and positive(result["seconds"])
    # A distillation step costs the student's training step plus the teacher's forward pass.
    assert (result["measurements"]["distill:mobilenet_v3_small"]["flops_per_image"]
            > result["measurements"]["train:mobilenet_v3_small"]["flops_per_image"])


def test_a_pack_size_is_one_more_row(result):
    single, packed = (result["measurements"][key] for key in ("distill:mobilenet_v3_small",
                                                               "distill:mobilenet_v3_small:pack4"))
    assert result["skipped"] == [] and packed["pack"] == 4 and "pack=4" in packed["label"]
    # Point-images: four students share one teacher forward pass per batch.
    assert single["flops_per_image"] > packed["flops_per_image"] > 0
    # The usual loop trains the points one after another: the reference is the single row's.
    assert packed["reference"] == single["reference"]
    assert positive(packed["ours"]["images_per_s"]) and positive(packed["ratio"])


def test_cpu_peak_is_measured_with_a_matmul(monkeypatch):
    import torch

    assert floor.measure_matmul(torch.device("cpu"), torch.float32, 128, rounds=2, per_round=2) > 1e6
    sizes = []
    monkeypatch.setattr(floor, "measure_matmul", lambda device, dtype, n, **kw: sizes.append((dtype, n)) or 5e10)
    assert floor.peak(torch.device("cpu"), None)[0] == 5e10
    assert sizes == [(torch.float32, 2048)] and "measured: fp32 torch.mm" in floor.peak(torch.device("cpu"), None)[1]
    with pytest.raises(KdsweepError, match="peak-flops"):
        floor.peak(torch.device("cpu"), 0.0)


def test_flop_count_of_grouped_convolutions_is_not_inflated():
    # torch's formula counts a depthwise conv's weight gradient `groups` times too high.
    import torch
    from torch import nn

    def train_flops(conv):
        x = torch.rand(2, 8, 8, 8)
        return floor.flops(lambda: conv(x).sum().backward())

    dense, depthwise = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
    forward_dense = 2 * 2 * 8 * 8 * 8 * 8 * 9
    # forward + grad_weight (the input needs no gradient)
    assert train_flops(dense) == 2 * forward_dense
    assert train_flops(depthwise) == 2 * forward_dense // 8


@pytest.mark.parametrize("argv, message", [
    (["--students", "resnet_unheard_of"], "no torchvision classification model"),
    (["--soft-weight", "0"], "soft-weight"),
    (["--warmup", "0"], "warm-up"),
])
def test_bad_arguments_name_the_fix(argv, message):
    with pytest.raises(KdsweepError, match=message):
        command.run(parse([*TINY, *argv]))


def test_the_command_line_reaches_the_bench_and_refuses_cuda_without_a_gpu():
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda would run the whole benchmark")
    result = subprocess.run([sys.executable, "-m", "kdsweep", "bench", "--device", "cuda", "--quick"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("kdsweep: error: runtime.device is cuda but no GPU is visible")
    assert "Traceback" not in result.stderr
