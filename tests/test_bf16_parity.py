"""bf16 autocast against fp32: the same training on the digits, within run-to-run noise (a CPU proxy of
the GPU default; scripts/gpu-check.sh measures the same on a GPU)."""

import math
import statistics
from pathlib import Path

from kdsweep import split, train
from kdsweep.config import load_config
from kdsweep.plan import Run

ROOT = Path(__file__).resolve().parents[1]


def test_bf16_accuracy_is_within_run_to_run_noise_of_fp32(tmp_path):
    """bf16 autocast (CPU) against fp32 on the digits, the demo's training settings, three seeds each.

    Different arithmetic, so not equal: the mean test accuracies must differ by less than what the
    seeds themselves scatter, bounded by a 99.9% two-sided Student-t interval of the difference of
    two means (pooled standard deviation, 4 degrees of freedom), and never by less than one test image.
    """
    from scipy import stats as scipy_stats

    config = load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")],
                         ["runtime.pack_size=1", "training.max_epochs=3"])
    stats_path = tmp_path / "stats.json"
    split.write_stats(stats_path, config["dataset"])
    accuracies = {}
    for precision in ("fp32", "bf16"):
        run_config = load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")],
                                 ["training.max_epochs=3", f"runtime.precision={precision}"])
        accuracies[precision] = [
            train.train_points(run_config, [Run("baseline", "mobilenet_v3_small", seed)], stats_path,
                               [tmp_path / f"{precision}{seed}"], log=lambda line: None)[0]["test_acc"]
            for seed in (0, 1, 2)]
    fp32, bf16 = accuracies["fp32"], accuracies["bf16"]
    n_test = len(split.load_configured(config["dataset"]).test_labels)
    assert min(fp32 + bf16) > 50, accuracies  # both really trained (chance is 10%)
    pooled = math.sqrt((statistics.variance(fp32) + statistics.variance(bf16)) / 2)
    bound = max(scipy_stats.t.ppf(0.9995, 4) * pooled * math.sqrt(2 / 3), 100 / n_test)
    assert abs(statistics.mean(bf16) - statistics.mean(fp32)) <= bound, (accuracies, bound)
