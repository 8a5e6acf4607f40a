"""The arithmetic of a job (kdsweep.runtime): the GPU path, and its CPU proxies that run everywhere.

Most tests here run twice: on the CPU with bf16 autocast and channels_last (the `cpu-proxy`
arithmetic, which every machine has: the same autocast, layout, fp32-logit and layout-matching
code that a GPU job runs), and on CUDA with the defaults a GPU job gets (`cuda`, skipped with the
reason where no GPU is visible; scripts/gpu-check.sh runs them on a GPU machine).

Equalities between two runs are of two kinds, said in each test: the same computation run
twice on the same machine (resume, packing, an attack's clean pass against the training job's
test pass: the same kernels on the same numbers), which must be exact; and the same quantity
along different arithmetic (bf16 against fp32), compared within run-to-run noise.
"""

import functools
import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdsweep import augment as augment_module
from kdsweep import runtime, sources, split, train
from kdsweep.config import load_config
from kdsweep.plan import Run

from conftest import run_kdsweep as kdsweep
from conftest import kd_run
from conftest import run_until_epoch
from kdsweep.models import FullPrecisionLinear, build_model

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
NO_GPU = "needs a CUDA GPU; none is visible (scripts/gpu-check.sh runs these on a GPU machine)"

ARITHMETIC = {
    "cpu-proxy": ["runtime.device=cpu", "runtime.precision=bf16", "runtime.channels_last=true"],
    "cuda": ["runtime.device=cuda"],
}
# The student of these tests. Not MobileNetV3-small on the CPU proxy: PyTorch 2.14.1's CPU kernel for
# a bf16, channels_last depthwise convolution of stride 2 whose input is 1 x 1 (MobileNetV3-small's
# 5 x 5 block 9 on the 8 x 8 digits) writes uninitialised memory into the weight gradient of the taps
# that only see padding (reproduced on this machine; see test_kernel_taps_that_see_only_padding_get_no_gradient_in_the_cpu_defaults): those
# taps never touch an output, so metrics agree, but the saved weights then differ between processes.
STUDENT = {"cpu-proxy": "resnet18", "cuda": "mobilenet_v3_small"}
COMPARED = ["epochs", "best_epoch", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]


def read(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module", params=[
    "cpu-proxy", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason=NO_GPU)])])
def job(request, tiny_study, tmp_path_factory):
    """(folder, config args, arithmetic overrides, teacher folder): this module's folder for one arithmetic
    beside the shared tiny study (conftest.tiny_study: its stats and its teacher, trained in fp32 on the
    CPU; a teacher's arithmetic is that of the job using it)."""
    folder = tiny_study.beside(tmp_path_factory.mktemp(f"test_runtime-{request.param}"))
    job = folder, tiny_study.config, ARITHMETIC[request.param], folder / "teacher"
    STUDENT[folder] = STUDENT[request.param]
    return job


def distill_args(job, out, *extra, temperature=4, soft_weight=0.5, seed=1):
    folder, config, arithmetic, teacher = job
    return ["distill", *config, "--student", STUDENT[folder], "--teacher", teacher, "--seed", seed,
            "--stats", folder / "stats.json", "--temperature", temperature, "--soft-weight", soft_weight,
            "--out", out, *arithmetic, *extra]




# ---------------------------------------------------------------- every job of a run, in one arithmetic


def test_runs_record_their_arithmetic(job):
    folder, *_ = job
    kdsweep(*distill_args(job, folder / "recorded", "training.max_epochs=1"), cwd=folder)
    run = read(folder / "recorded" / "metrics.json")
    record = run["runtime"]
    if run["device"].startswith("cuda"):
        # the GPU defaults: bf16 autocast with fp32 logits, channels_last, deterministic kernels
        assert record == {**record, "precision": "bf16 autocast, fp32 logits", "channels_last": True,
                          "deterministic": True, "compile": False}
    else:
        assert record == {**record, "precision": "bf16 autocast, fp32 logits", "channels_last": True,
                          "compile": False}
    assert run["precision"] == record["precision"] and run["device"] == record["device"]


def test_distillation_and_a_pack_of_points_equal_separate_runs(job):
    """Packing (one job, two points, shared teacher logits) against one job per point: the same
    computation per point on the same machine, so exactly equal."""
    folder, *_ = job
    points = [(4, 0.5), (2, 0.9)]
    packed = []
    for i, (temperature, weight) in enumerate(points):
        kdsweep(*distill_args(job, folder / f"alone{i}", temperature=temperature, soft_weight=weight,
                              seed=5), "training.max_epochs=1", cwd=folder)
        packed += ["--temperature", temperature, "--soft-weight", weight, "--out", folder / f"packed{i}"]
    args = distill_args(job, folder / "unused", seed=5)
    cut = args.index("--temperature")
    kdsweep(*args[:cut], *args[cut + 6:], *packed, "training.max_epochs=1", cwd=folder)
    for i in range(len(points)):
        alone, pack = read(folder / f"alone{i}" / "metrics.json"), read(folder / f"packed{i}" / "metrics.json")
        assert {k: alone[k] for k in COMPARED} == {k: pack[k] for k in COMPARED}
        assert pack["runtime"] == alone["runtime"] and pack["role"] == "kd"


def test_a_stopped_run_resumes_to_the_metrics_of_an_uninterrupted_one(job):
    """SIGTERM after epoch 1, then a restart, against a run never stopped: the same computation,
    exactly equal (on CUDA thanks to runtime.deterministic)."""
    folder, *_ = job
    whole, stopped = folder / "whole", folder / "stopped"
    two = "training.max_epochs=2"
    kdsweep(*distill_args(job, whole, two), cwd=folder)
    assert run_until_epoch(folder, distill_args(job, stopped, two), 1, signal.SIGTERM) == runtime.EXIT_PREEMPTED
    assert (stopped / "checkpoint.pt").exists() and not (stopped / "metrics.json").exists()
    resumed = kdsweep(*distill_args(job, stopped, two), cwd=folder)
    assert "resuming" in resumed.stdout
    a, b = read(whole / "metrics.json"), read(stopped / "metrics.json")
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert b["resumed"] == 1
    weights = [torch.load(run / "model.pt", weights_only=True)["state_dict"] for run in (whole, stopped)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_ctrl_c_stops_training_like_sigterm_and_the_run_resumes(tiny_study, tmp_path):
    """Ctrl-C (SIGINT) after epoch 1: the loop stops at its next batch as on SLURM's signals, keeps the
    checkpoint of its last finished epoch and exits 75 without a traceback; started again, it resumes."""
    import os
    import subprocess
    import sys

    folder = tiny_study.beside(tmp_path / "study")
    run = folder / "run"
    args = ["train", *tiny_study.config, "--model", "mobilenet_v3_small", "--seed", 1, "--stats", folder / "stats.json",
            "--out", run, "training.max_epochs=5"]
    # SIGINT as a terminal sends it (a shell's background job would start with it ignored)
    process = subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, args)], cwd=folder, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if "  epoch   1" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == runtime.EXIT_PREEMPTED, (process.returncode, err[-2000:])
    assert "Traceback" not in err and err.strip() == "" and "received SIGINT: stopped" in out
    assert (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists()
    resumed = kdsweep(*args, cwd=folder)
    assert "resuming" in resumed.stdout and read(run / "metrics.json")["resumed"] == 1


def test_attacks_and_the_evaluate_job_measure_in_the_runs_arithmetic(job):
    """The test accuracy of the training job and the evaluate job's accuracy: one arithmetic (autocast, layout,
    kernels) over the same weights and images, so exactly equal; and each JSON records that arithmetic. The
    attacks compute in float32 whatever runtime.precision says (kdsweep.attacks): their clean accuracy is the
    evaluate job's under runtime.precision=fp32 in the same layout, exactly, and their record says fp32."""
    folder, config, arithmetic, teacher = job
    run = folder / "attacked"
    kdsweep(*distill_args(job, run, "training.max_epochs=1"), cwd=folder)
    metrics = read(run / "metrics.json")
    out = folder / "evaluation.json"
    evaluated = kdsweep("evaluate", *config, "--run", run, "--teacher", teacher, "--out", out, *arithmetic,
                        cwd=folder)
    result = read(out)
    assert result["test_acc"] == result["test_acc_metrics"] == metrics["test_acc"]
    assert result["runtime"] == metrics["runtime"] and "warning" not in evaluated.stderr
    fp32 = folder / "evaluation-fp32.json"
    kdsweep("evaluate", *config, "--run", run, "--teacher", teacher, "--out", fp32, *arithmetic,
            "runtime.precision=fp32", cwd=folder)
    for attack in ("fgsm", "pgd"):
        out = folder / f"{attack}.json"
        kdsweep("attack", *config, "--run", run, "--attack", attack, "--epsilon", 0.1, "--out", out, *arithmetic,
                cwd=folder)
        result = read(out)
        assert result["clean_acc"] == read(fp32)["test_acc"], attack
        expected = "tf32" if metrics["runtime"]["precision"] == "tf32" else "fp32"
        assert result["precision"] == result["runtime"]["precision"] == expected
        assert {k: v for k, v in result["runtime"].items() if k != "precision"} == {
            k: v for k, v in metrics["runtime"].items() if k != "precision"}


def test_attack_and_evaluate_jobs_never_compile(job):
    folder, config, arithmetic, teacher = job
    out = folder / "fgsm-compile.json"
    kdsweep("attack", *config, "--run", teacher, "--epsilon", 0.05, "--out", out, *arithmetic,
            "runtime.compile=true", cwd=folder)
    assert read(out)["runtime"]["compile"] is False


def test_a_checkpoint_resumes_under_another_runtime_section(job, monkeypatch):
    """Written in fp32 with contiguous tensors, resumed with bf16, channels_last and torch.compile.

    On CUDA with the real compiler. On the CPU with dynamo's eager backend: the same compiled
    wrapper (whose state-dict keys carry `_orig_mod.`), without a minute of C++ compilation."""
    folder, config_args, arithmetic, teacher = job
    run = folder / "switched"
    device = "cuda" if "runtime.device=cuda" in arithmetic else "cpu"
    before = [f"runtime.device={device}", "runtime.precision=fp32", "runtime.channels_last=false",
              "runtime.compile=false"]
    after = [f"runtime.device={device}", "runtime.precision=bf16", "runtime.channels_last=true",
             "runtime.compile=true"]
    before, after = [*before, "training.max_epochs=2"], [*after, "training.max_epochs=2"]
    assert run_until_epoch(folder, distill_args(job, run, *before), 1, signal.SIGTERM) == runtime.EXIT_PREEMPTED
    config = load_config([str(p) for p in config_args[1::2]], after)
    spec = kd_run("kd", STUDENT[folder], 1, temperature=4.0, soft_weight=0.5)
    if device == "cpu":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))

    # Adam's state takes its parameter's layout: CUDA's fused Adam refuses a mismatch.
    stats = split.read_stats(folder / "stats.json", config["dataset"])
    splits = split.load_splits(config["dataset"], device, stats)
    resumed = train._JobPoint(config, spec, run, read(teacher / "metrics.json")["config_hash"], splits, stats,
                              runtime.Runtime.from_config(config["runtime"]), lambda line: None, False)
    # the signal lands during epoch 2: the checkpoint is of epoch 1, and epoch 2 trains under the new section
    assert resumed.state.epoch == 1 and resumed.model is not resumed.module
    states = [(param, state) for param, state in resumed.optimizer.state.items()]
    assert states and any(param.dim() == 4 for param, _ in states)
    for param, state in states:
        assert param.is_contiguous(memory_format=torch.channels_last) or param.dim() != 4
        for value in state.values():
            if value.shape == param.shape:
                assert value.stride() == param.stride()

    (metrics,) = train.train_points(config, [spec], folder / "stats.json", [run], teacher_dir=teacher,
                                    log=lambda line: None)
    assert metrics["epochs"] == 2 and metrics["resumed"] == 1
    assert metrics["runtime"]["compile"] is True and metrics["runtime"]["channels_last"] is True
    assert metrics["precision"] == "bf16 autocast, fp32 logits"
    assert not (run / "checkpoint.pt").exists()


# ---------------------------------------------------------------- the pieces (CPU, everywhere)


def test_the_logits_are_fp32_under_bf16_autocast():
    """The classifier's last layer runs in fp32: under autocast its output is what an fp32 linear
    layer gives on the same (bf16-computed) features, the same computation, so exactly equal."""
    torch.manual_seed(0)
    for name in ("resnet18", "mobilenet_v3_small"):
        model = build_model(name, 10, [0.5] * 3, [0.25] * 3).eval()
        heads = [m for m in model.modules() if isinstance(m, FullPrecisionLinear)]
        assert len(heads) == 1 and heads[0] is [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        seen = {}
        heads[0].register_forward_hook(lambda module, args, output: seen.update(x=args[0], y=output))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(torch.rand(8, 3, 8, 8))
        assert logits.dtype == torch.float32 and seen["x"].dtype == torch.bfloat16
        with torch.inference_mode():
            expected = F.linear(seen["x"].float(), heads[0].weight, heads[0].bias)
        assert torch.equal(seen["y"], expected)


def test_global_pools_are_means_with_the_same_values():
    """GlobalAvgPool replaces AdaptiveAvgPool2d(1) (no deterministic CUDA backward): the same mean,
    along another reduction order, so equal up to float32 rounding."""
    from torch import nn

    from kdsweep.models import GlobalAvgPool

    x = torch.randn(4, 16, 5, 7, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(GlobalAvgPool()(x), nn.AdaptiveAvgPool2d(1)(x), rtol=1e-6, atol=1e-7)
    for name in ("resnet18", "resnet50", "mobilenet_v3_small"):
        model = build_model(name, 10, [0.5] * 3, [0.25] * 3)
        assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules()), name


def test_augmentation_of_a_batch_copies_nothing_from_the_host():
    """With an epoch's draws already on the device, augmenting a batch makes no host-to-device copy
    (each would drain a GPU's queue). The meta device stands in for a GPU: any tensor made on the
    CPU and moved there shows up as a copy from the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.copies = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensors = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)]
            if any(t.device.type == "cpu" for t in tensors) and any(t.device.type == "meta" for t in tensors):
                self.copies.append(str(func))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) and \
                    tensors and tensors[0].device.type == "cpu" and \
                    (kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "meta"):
                self.copies.append(str(func))
            return func(*args, **kwargs)

    augment = augment_module.Augment(pad=4, flip_p=0.5, rotation_degrees=15)
    draws = augment.sample(64, torch.Generator().manual_seed(0)).to("meta")
    images = torch.empty(64, 3, 32, 32, dtype=torch.uint8, device="meta")
    with HostCopies() as mode:
        out = augment.apply(images[:32], draws[:32])
    assert out.device.type == "meta" and out.shape == (32, 3, 32, 32)
    assert mode.copies == []


def test_an_epoch_moves_its_shuffle_and_augmentation_to_the_device_once(monkeypatch):
    """However many batches, one epoch sends its permutation and its augmentation draws to the device
    in one go (runtime.to_device: pinned, asynchronous), never per batch."""
    moved = []
    real = runtime.to_device

    def counting(tensor, device):
        moved.append(tuple(tensor.shape))
        return real(tensor, device)

    monkeypatch.setattr(sources, "to_device", counting)
    monkeypatch.setattr(augment_module, "to_device", counting)
    rt = runtime.Runtime.from_config({"device": "cpu", "threads": 0, "precision": "fp32", "tf32": False,
                                      "deterministic": True, "channels_last": False, "compile": False})
    training = {"lr": 1e-3, "weight_decay": 0.0, "bn_momentum": 0.1}
    point = train.Point(Run("baseline", "mobilenet_v3_small", 0), training, 10, [0.5] * 3, [0.25] * 3, rt)
    images = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(96) % 10
    augment = augment_module.Augment(pad=1, flip_p=0.5, rotation_degrees=10)
    train.train_epoch([point], None, sources.InMemory(augment, images, labels, 8), torch.Generator().manual_seed(0), rt)
    # 12 batches; 5 moves: the order, then flips, angles, tops and lefts, each of the whole epoch
    assert moved == [(96,)] * 5


def test_a_kernel_without_a_deterministic_version_is_one_sentence():
    error = RuntimeError("adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but you "
                         "set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")
    refused = runtime.nondeterministic_op(error)
    assert "adaptive_max_pool2d_backward_cuda" in str(refused) and "runtime.deterministic=false" in str(refused)
    assert runtime.nondeterministic_op(RuntimeError("CUDA out of memory")) is None


def test_kernel_taps_that_see_only_padding_get_no_gradient_in_the_cpu_defaults():
    """Where a 5 x 5 depthwise convolution of stride 2 sees a 1 x 1 input, only its centre tap ever
    touches an input, so the other taps' weight gradient is exactly zero by construction: so it is in
    fp32 (kdsweep's CPU default), in either layout, even with freed memory primed with NaN. (With bf16
    autocast and channels_last, PyTorch 2.14.1's CPU kernel fills those entries from uninitialised
    memory on this machine's processor: see STUDENT.)"""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(96, 96, 5, stride=2, padding=2, groups=96, bias=False)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        garbage = torch.full((32 * 96 * 400,), float("nan"))
        del garbage  # freed memory the next allocations may reuse
        layer = conv.to(memory_format=memory_format)
        layer.zero_grad()
        x = torch.randn(32, 96, 1, 1).contiguous(memory_format=memory_format).requires_grad_(True)
        layer(x).sum().backward()
        outer = layer.weight.grad.clone()
        outer[:, :, 2, 2] = 0
        assert torch.count_nonzero(outer) == 0, memory_format


# ---------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason=NO_GPU)
def test_cuda_kernel_settings_follow_the_runtime_section():
    section = {"device": "cuda", "threads": 0, "precision": "auto", "tf32": False, "deterministic": True,
               "channels_last": "auto", "compile": False}
    rt = runtime.Runtime.from_config(section)
    assert rt.bf16 and rt.channels_last
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    fast = runtime.Runtime.from_config({**section, "deterministic": False, "tf32": True})
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.conv.fp32_precision == "tf32" and fast.precision == "bf16 autocast, fp32 logits"
    with runtime.pytorch_defaults():
        assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark
    runtime.Runtime.from_config(section)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason=NO_GPU)
def test_cuda_augmentation_equals_the_cpu_one():
    """The same draws on the same images: pad, flip and crop move the same bytes; the rotation's
    grid is float32 arithmetic on another device, so at most a few pixels on sample-point
    boundaries may differ."""
    augment = augment_module.Augment(pad=4, flip_p=0.5, rotation_degrees=15)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = augment.sample(len(images), torch.Generator().manual_seed(1))
    cpu = augment.apply(images, draws)
    gpu = augment.apply(images.cuda(), draws.to("cuda")).cpu()
    assert (cpu != gpu).float().mean().item() < 1e-3
    flat = augment_module.Augment(pad=4, flip_p=0.5, rotation_degrees=0)
    assert torch.equal(flat.apply(images, draws), flat.apply(images.cuda(), draws.to("cuda")).cpu())
