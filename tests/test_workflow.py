"""The Snakemake workflow, run by the real snakemake (subprocess) in a temporary directory.

Dry runs check the DAG (jobs per rule, the staged checkpoint, the attack jobs, config errors);
one end-to-end run of tests/studies/tiny.yaml checks that the jobs, tables and figures exist.
Nothing is written into the repository: every call uses --directory TMP.
"""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_WORKFLOW, built_once, copy_of, job_counts, snakemake

from kdsweep import joblog

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "config.yaml"
def dry_run(workdir, *args, configfiles=()):
    result = snakemake(workdir, "--dry-run", *args, configfiles=configfiles)
    return job_counts(result.stdout), result.stdout


def _dry_run_reference_study(folder):
    output = snakemake(folder, "--dry-run", "--printshellcmds").stdout
    (folder / "dry-run.txt").write_text(output)


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory):
    """Dry run of config.yaml (the reference study) with its shell commands, once per test run
    (conftest.built_once): (job counts, output)."""
    output = (built_once(tmp_path_factory, "reference-dry-run", _dry_run_reference_study) / "dry-run.txt").read_text()
    return job_counts(output), output


def test_grid_dry_run_has_every_job_of_the_reference_study(reference_study):
    counts, _ = reference_study
    # teacher, baselines, students x temperatures x soft weights above 0 (w = 0 is the baseline), and the
    # confirmation's baselines (2 students x 3 fresh seeds; its distilled runs come after its checkpoints)
    runs = 1 + 2 + 2 * 8 * 6 + 2 * 3
    assert counts["stats"] == 1
    assert counts["train"] == 1 + 2 + 2 * 3  # the teacher and the baselines
    assert counts["distill"] == 96
    assert counts["attack"] == runs == 105  # one per run: every attack at every epsilon, and its evaluation
    assert "evaluate" not in counts
    assert counts["tables"] == counts["figures"] == counts["all"] == 1
    assert counts["download"] == 1  # no CIFAR-10 files in the empty working directory
    assert counts["best_point"] == 2 and "best_temperature" not in counts


def test_seeds_multiply_the_student_runs(tmp_path):
    counts, _ = dry_run(tmp_path, "--config", "seeds=[0,1]")
    assert counts["train"] == 1 + 2 * 2 + 2 * 3  # teacher, baselines, confirmation baselines (not multiplied)
    assert counts["distill"] == 96 * 2
    assert counts["attack"] == 1 + 4 + 192 + 6


def test_an_attack_switched_off_has_no_result_files(tmp_path):
    counts, output = dry_run(tmp_path, "--config", "attacks={pgd: null}")
    assert counts["attack"] == 105 and "pgd_eps" not in output and "apgd_t_eps0.01.json" in output


def test_staged_sweep_runs_the_temperature_sweep_before_its_checkpoint(tmp_path):
    counts, _ = dry_run(tmp_path, "--config", "sweep=staged")
    assert counts["best_temperature"] == 2  # one checkpoint per student
    assert counts["distill"] == 2 * 8  # every temperature at staged.soft_weight, nothing else yet
    assert counts["attack"] == 1 + 2 + 16 + 6  # and the confirmation's 6 baselines
    assert counts["tables"] == counts["figures"] == 1


def test_one_attack_job_per_run_writes_its_evaluation_against_its_teacher(reference_study):
    """Each run's one job: its attacks, its evaluation and its masking record; a student's and a baseline's
    measured against the study's teacher (and, with robustness.transfer, attacked from it and from the
    student's own seed's baseline), the teacher against itself."""
    _, output = reference_study
    commands = {re.search(r"--run (\S+)", line).group(1): line
                for line in output.splitlines() if "kdsweep attack " in line}
    assert len(commands) == 105 and not any("_soft0_" in run for run in commands)
    teacher = "results/cifar10-reference/runs/teacher/resnet50_seed0"
    assert "--teacher" not in commands[teacher] and "--baseline" not in commands[teacher]
    assert "--evaluation results/cifar10-reference/evaluation/teacher/resnet50_seed0.json" in commands[teacher]
    student = commands["results/cifar10-reference/runs/kd/resnet18_T4_soft0.9_seed0"]
    assert f"--teacher {teacher} " in student and "--baseline results/cifar10-reference/runs/baseline/resnet18_seed0 " in student
    assert "--evaluation results/cifar10-reference/evaluation/kd/resnet18_T4_soft0.9_seed0.json " in student
    baseline = commands["results/cifar10-reference/runs/baseline/resnet18_seed0"]
    assert f"--teacher {teacher} " in baseline and "--baseline" not in baseline
    assert "Group job" not in output  # one job per run needs no group


def test_packed_grid_trains_pack_size_points_per_job(tmp_path):
    counts, output = dry_run(tmp_path, "--printshellcmds", "--config", "runtime={pack_size: 8}")
    # 48 points per student and seed (the grid's 56 but w = 0), 8 to a job, all jobs of rule distill
    assert counts["distill"] == 12
    assert counts["attack"] == 105  # one folder per point
    commands = [line for line in output.splitlines() if "kdsweep distill " in line]
    assert len(commands) == 12
    outs = [re.findall(r"--out (\S+)", line) for line in commands]
    assert sorted(len(o) for o in outs) == [8] * 12
    assert len({o for pack in outs for o in pack}) == 96  # every point in exactly one pack
    for line in commands:  # one student and seed per pack
        assert line.count("--student ") == 1 and line.count("--seed ") == 1
    records = set(re.findall(r"--record (\S+/packs/\S+)", output))
    assert records == {f"results/cifar10-reference/packs/{s}_seed0_pack{i}.json"
                       for s in ("mobilenet_v3_small", "resnet18") for i in range(1, 7)}


def test_packed_staged_sweep_packs_the_temperature_sweep(tmp_path):
    counts, output = dry_run(tmp_path, "--config", "sweep=staged", "runtime={pack_size: 4}")
    assert counts["distill"] == 4 and counts["best_temperature"] == 2
    assert set(re.findall(r"packs/(\S+)\.json", output)) == {
        f"{s}_seed0_pack{i}" for s in ("mobilenet_v3_small", "resnet18") for i in (1, 2)}


@pytest.mark.parametrize(
    "override, key",
    [
        ("soft_weights=[1.5]", "soft_weights"),
        ("colour=blue", "colour"),
        ("training={lr: -1}", "lr"),
        ("sweep=both", "sweep"),
        ("students=[../vgg16]", "students"),  # no model name (unknown names: tests/test_teachers.py)
    ],
)
def test_bad_config_fails_before_any_job_with_the_key_named(tmp_path, override, key):
    result = snakemake(tmp_path, "--dry-run", "--config", override, check=False)
    output = result.stdout + result.stderr  # snakemake logs errors to either
    assert result.returncode != 0
    # snakemake's validation against the static schema, or kdsweep.config's against the enums it derives from
    # the registries (sweep: kdsweep.search.STRATEGIES), which common.smk runs before planning any job
    refused = re.search(r"Error validating config file|config key '[^']+' is invalid", output)
    assert refused, output[-3000:]
    assert key in output[refused.start():]
    assert "Job stats" not in output
    assert not (tmp_path / "results").exists()


def test_two_values_with_one_folder_name_are_refused(tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--config", "temperatures=[4,4.0000001]", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "temperatures hold 4 and 4.0000001" in output and "folder name '4'" in output


def test_jobs_get_the_exact_config_numbers_and_the_config_slice(tmp_path):
    eps = 8 / 255  # folder name 0.0313725, command line the full float
    result = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--forceall",
                       "--config", f"epsilons=[{eps!r}]", "temperatures=[2.5]", "soft_weights=[0.3]")
    out = result.stdout
    for name in ("fgsm", "pgd", "apgd_ce", "apgd_dlr", "apgd_t", "square", "worst"):
        assert f"attacks/kd/resnet18_T2.5_soft0.3_seed0/{name}_eps0.0313725.json" in out, name
    assert "masking/kd/resnet18_T2.5_soft0.3_seed0.json" in out
    attack = next(line for line in out.splitlines() if " attack --run results/cifar10-reference/runs/kd/resnet18_T2.5" in line)
    assert f"'epsilons=[{eps!r}]'" in attack
    assert "attacks.pgd.steps=10" in attack and "attacks.pgd.random_start=true" in attack and "'attacks.fgsm={}'" in attack
    assert "attacks.apgd_t.targets=9" in attack and "robustness.subset.size=1000" in attack
    assert "--teacher results/cifar10-reference/runs/teacher/resnet50_seed0" in attack
    assert "--baseline results/cifar10-reference/runs/baseline/resnet18_seed0" in attack
    teacher = next(line for line in out.splitlines() if " attack --run results/cifar10-reference/runs/teacher/" in line)
    assert "--teacher" not in teacher and "--baseline" not in teacher
    # how runs are grouped into jobs, not what they compute: in no job's command (only the records of
    # the config, `kdsweep config`, hold it)
    commands = [line for line in out.splitlines() if line.startswith("Shell command: kdsweep ")]
    jobs = [line for line in commands if not line.startswith("Shell command: kdsweep config ")]
    assert jobs and not any("runtime.pack_size" in line for line in jobs)
    assert "--temperature 2.5 --soft-weight 0.3 " in out
    distill = next(line for line in out.splitlines() if " distill --student resnet18" in line)
    assert distill.split()[:4] == ["Shell", "command:", "kdsweep", "distill"]
    for override in ("training.batch_size=300", "training.bn_momentum=null", "augmentation.pad=4",
                     "'dataset.name=\"cifar10\"'", "runtime.threads=1", "--config results/cifar10-reference/runtime.yaml"):
        assert override in distill
    runtime = next(line for line in out.splitlines() if "kdsweep config --section runtime" in line)
    assert "'runtime.device=\"auto\"'" in runtime and "runtime.deterministic=true" in runtime


def test_jobs_run_kdsweep_with_the_python_that_runs_snakemake(tmp_path):
    """`kdsweep` in every rule's shell is a function of the shell prefix: this interpreter's -m kdsweep."""
    script = f"""
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
from snakemake.shell import shell
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(),
                            config_settings=ConfigSettings(configfiles=[Path({str(DEFAULTS)!r})]),
                            snakefile=Path({str(REPO / "Snakefile")!r}), workdir=Path.cwd())
    workflow._workflow  # parses the Snakefile
    print(shell._process_prefix)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    prefix = result.stdout.strip().splitlines()[-1]
    assert f'kdsweep() {{ KDSWEEP_JOB_LOG=1 {sys.executable} -m kdsweep "$@"; }};' in prefix and prefix.startswith("set -euo pipefail;")


def tables(results):
    import pandas as pd

    return {name: pd.read_csv(results / "tables" / name)
            for name in ("runs.csv", "robustness.csv", "table1.csv", "kd_vs_hard.csv", "grid.csv", "methods.csv",
                         "method_grid.csv", "confirmed.csv")}


def test_tiny_study_end_to_end(tiny):
    """Train, distil, attack, aggregate and plot for real: every table row and figure is there."""
    results = tiny / "results" / "tiny"
    found = tables(results)
    runs = found["runs.csv"]
    assert sorted(runs["role"]) == ["baseline", "kd", "kd", "teacher"]
    assert sorted(runs.loc[runs["role"] == "kd", "soft_weight"]) == [0.5, 0.9]
    robustness = found["robustness.csv"]
    # 4 runs x 1 epsilon x (FGSM, APGD-T, Square, their worst case; PGD is off); FGSM's transfer attacks from the
    # teacher (the baseline's and both kd runs') and from the baseline (the kd runs')
    assert len(robustness) == 4 * 4 + 3 + 2
    assert set(robustness["attack"]) == {"fgsm", "apgd_t", "square", "worst", "transfer_teacher", "transfer_baseline"}
    worst = robustness[robustness["attack"] == "worst"]
    assert worst["n"].eq(40).all() and worst["subset_size"].eq(40).all() and worst["n_test"].eq(360).all()
    assert (worst["adv_acc_low"] <= worst["adv_acc"]).all() and (worst["adv_acc"] <= worst["adv_acc_high"]).all()
    fgsm = robustness[robustness["attack"] == "fgsm"]
    assert fgsm["n"].eq(360).all() and fgsm["subset_size"].isna().all()
    assert (fgsm.set_index("run")["clean_acc"] == runs.set_index("run").loc[fgsm["run"], "test_acc"]).all()
    masking = pd.read_csv(results / "tables" / "masking.csv")
    assert sorted(masking["run"].unique()) == sorted(runs["run"]) and masking["check"].nunique() >= 5
    assert "Gradient masking" in (results / "tables" / "masking.md").read_text()
    per_class = pd.read_csv(results / "tables" / "per_class.csv")
    assert set(per_class["measure"]) == {"clean", "worst"} and "worst" in set(per_class["class"].astype(str))
    assert runs["worst_class_acc"].notna().all()
    for record in (results / "masking").glob("*/*.json"):
        assert json.loads(record.read_text())["checks"]
    # every run's evaluation joined in: fidelity, calibration and logit scale (issue 6)
    for column in ("agreement", "kl_to_teacher", "ece", "nll", "max_logit", "logit_norm"):
        assert runs[column].notna().all(), column
    assert {"max_logit", "logit_norm"} <= set(found["robustness.csv"].columns)
    assert sorted(found["table1.csv"]["role"]) == ["baseline", "teacher"]
    assert len(found["grid.csv"]) == 2
    assert {"clean", "fgsm", "worst"} <= set(found["kd_vs_hard.csv"]["measure"])
    for stem in ("temperature", "fidelity", "soft_weight_mobilenet_v3_small",
                 "grid_mobilenet_v3_small", "robustness_mobilenet_v3_small", "per_class_mobilenet_v3_small"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{stem}.{ext}").stat().st_size > 0
    run = results / "runs/kd/mobilenet_v3_small_T4_soft0.5_seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["temperature"] == 4 and metrics["soft_weight"] == 0.5
    assert metrics["config"]["training"]["max_epochs"] == 1  # the study's value reached the job
    assert (run / "history.csv").is_file() and (run / "model.pt").is_file()
    assert (results / "evaluation/kd/mobilenet_v3_small_T4_soft0.5_seed0.json").is_file()
    assert not (run / "checkpoint.pt").exists()


# One point of each logit KD method and of attention transfer (a feature method: its student and teacher taps
# through the workflow) beside kd's two, one fresh seed for the confirmation of each method's best
EVERY_METHOD = ["methods={dkd: {warmup_epochs: [1]}, lskd: {}, ctkd: {lambda_epochs: [1]}, at: {}}",
                "confirm={seeds: [1]}"]


def test_a_finished_study_gains_every_method_and_confirms_each_without_retraining_kd(tiny, tmp_path):
    """The finished tiny study (kd alone), with four more KD methods and a confirmation: the dry run plans no
    kd training (its packs, records and evaluations are up to date) but the new methods' runs and the
    confirmation; run for real, the methods table has a row per method, each method its heat map, and the
    confirmation a point per method, trained again on the fresh seed."""
    tiny = copy_of(tiny, tmp_path / "tiny")
    results = tiny / "results" / "tiny"
    counts, output = dry_run(tiny, "--config", *EVERY_METHOD, configfiles=[TINY_WORKFLOW])
    # 4 new points (pack size 1: a job each), the confirmation's baseline; no kd job but the checkpoint
    assert counts["distill"] == 4 and counts["train"] == 1, counts
    assert counts["best_point"] == 5  # one per method of the one student
    assert "runs/kd/" not in "".join(line for line in output.splitlines() if "output:" in line and "packs/" in line)
    before = kd_metrics(results)
    snakemake(tiny, "--cores", "2", "--show-failed-logs", "--config", *EVERY_METHOD, configfiles=[TINY_WORKFLOW])
    assert kd_metrics(results) == before  # kd's runs untouched
    found = tables(results)
    methods = found["methods.csv"]
    assert list(dict.fromkeys(methods["method"])) == ["kd", "at", "ctkd", "dkd", "lskd"]
    assert methods.query("measure == 'clean'")["kd_n"].eq(1).all()
    kd = found["kd_vs_hard.csv"].query("measure == 'clean'").iloc[0]
    mine = methods.query("method == 'kd' and measure == 'clean'").iloc[0]
    assert mine["kd_mean"] == kd["kd_mean"] and mine["point"] == (
        f"temperature={kd['temperature']:g}, soft_weight={kd['soft_weight']:g}")
    assert set(found["method_grid.csv"]["method"]) == {"kd", "at", "ctkd", "dkd", "lskd"}
    confirmed = found["confirmed.csv"].query("measure == 'clean'")
    against = confirmed.groupby("against")["method"].apply(sorted).to_dict()
    # each method against the baseline, and each other method head to head against kd, on the fresh seed
    assert against == {"baseline": ["at", "ctkd", "dkd", "kd", "lskd"], "kd": ["at", "ctkd", "dkd", "lskd"]}
    assert confirmed["kd_n"].eq(1).all() and confirmed["gain_n"].eq(1).all()
    kd_fresh = confirmed.query("method == 'kd' and against == 'baseline'")["kd_mean"].iloc[0]
    assert confirmed.query("against == 'kd'")["hard_mean"].eq(kd_fresh).all()  # kd's confirmed point is the other side
    for method in ("at", "ctkd", "dkd", "lskd"):
        assert (results / "confirm" / f"mobilenet_v3_small_{method}.json").is_file()
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"grid_{method}_mobilenet_v3_small.{ext}").stat().st_size > 0
    assert "| mobilenet_v3_small | ctkd |" in (results / "tables" / "methods.md").read_text()
    with open(results / "runs/at/mobilenet_v3_small_at_b1000_p2_st3_seed0/history.csv") as handle:
        assert all(float(row["train_at_loss"]) > 0 for row in csv.DictReader(handle))  # the taps reached the loss


def test_tiny_study_is_up_to_date_and_reruns_on_a_changed_value(tiny, tmp_path):
    tiny = copy_of(tiny, tmp_path / "tiny")
    result = snakemake(tiny, "--dry-run", configfiles=[TINY_WORKFLOW])
    assert "Nothing to be done" in result.stdout + result.stderr

    # a changed runtime value rewrites runtime.yaml and reruns nothing (it changes no result)
    counts, _ = dry_run(tiny, "--config", "runtime={channels_last: true, precision: bf16}", configfiles=[TINY_WORKFLOW])
    # (and study.yaml, the config `python -m kdsweep status` reads, which no job reads)
    assert dict(counts) == {"runtime": 1, "study": 1, "all": 1, "total": 3}

    # so does a moved data folder: where the data lies is in no job's params and no run's identity
    counts, _ = dry_run(tiny, "--config", "dataset={root: /elsewhere/data}", configfiles=[TINY_WORKFLOW])
    assert dict(counts) == {"runtime": 1, "study": 1, "all": 1, "total": 3}

    # a changed value of the jobs' config slice reruns the runs (params trigger), not the split
    counts, output = dry_run(tiny, "--config", "training={lr: 0.002}", configfiles=[TINY_WORKFLOW])
    assert counts["train"] == 2 and counts["distill"] == 2  # teacher and baseline, both points
    assert "stats" not in counts
    assert "Params have changed since last execution" in output


def test_a_config_switched_away_and_back_retrains_nothing_the_second_time(tiny, tmp_path):
    """The teacher under another learning rate, then under the study's again: the first run is kept aside
    (results/tiny/aside/), not deleted, and comes back without a training epoch; `status` lists the
    version kept aside."""
    tiny = copy_of(tiny, tmp_path / "tiny")
    teacher = "results/tiny/trained/teacher/mobilenet_v3_small_seed0.json"
    run = tiny / "results/tiny/runs/teacher/mobilenet_v3_small_seed0"
    log = tiny / "results/tiny/logs/runs/teacher/mobilenet_v3_small_seed0.log"
    before = json.loads((run / "metrics.json").read_text())
    snakemake(tiny, "--cores", "1", teacher, "--config", "training={lr: 0.002}", configfiles=[TINY_WORKFLOW])
    assert " epoch " in log.read_text() and "kept aside" in log.read_text()
    assert json.loads((run / "metrics.json").read_text())["config_hash"] != before["config_hash"]
    snakemake(tiny, "--cores", "1", teacher, configfiles=[TINY_WORKFLOW])
    text = "\n".join(joblog.last_attempt(log.read_text().splitlines()))  # the log keeps every attempt
    assert "brought back this configuration's run" in text and " epoch " not in text, log.read_text()
    assert json.loads((run / "metrics.json").read_text()) == before
    status = subprocess.run([sys.executable, "-m", "kdsweep", "status", "results/tiny"], cwd=tiny,
                            capture_output=True, text=True, check=True).stdout
    assert "kept aside (runs of earlier configurations" in status and "1 in " in status


def kd_metrics(results):
    return {run.name: json.loads((run / "metrics.json").read_text()) for run in (results / "runs" / "kd").iterdir()}


def test_a_new_pack_size_on_a_finished_study_plans_nothing(tiny, tmp_path):
    """runtime.pack_size 2 on the finished tiny study: its packs (of one) were trained, and keep their runs and
    records (plan.recorded_packs), so nothing is planned: no pack, no evaluation, not even the study record
    (how jobs are grouped is not what the study is)."""
    moved = copy_of(tiny, tmp_path / "moved")
    result = snakemake(moved, "--dry-run", "--config", "runtime={pack_size: 2}", configfiles=[TINY_WORKFLOW])
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_rewritten_record_measures_nothing_again_and_a_changed_model_is_measured_again(tiny, tmp_path):
    """The finished tiny study with its kd runs' pack records written again (other bytes, newer than every
    result, as a forced job, or a pack that gained a point, writes them): no attack or evaluation is planned,
    only the tables (which read the records) and the figures. Then one run's model changed (its metrics.json
    names other weights, as the same job run on another machine may leave it; the digest is what the workflow
    compares) and its record written again: exactly that run's attack and evaluation are planned, and the
    tables and figures after them."""
    import os

    def rewrite(record, when):
        """The record's content in other bytes (Snakemake compares a small input's checksum besides its
        time: a record only touched is no record written again), dated `when`."""
        record.write_text(json.dumps(json.loads(record.read_text()), indent=1) + "\n")
        os.utime(record, (when, when))

    work = copy_of(tiny, tmp_path / "tiny")
    results = work / "results" / "tiny"
    later = max(path.stat().st_mtime for path in results.rglob("*") if path.is_file()) + 10
    records = sorted((results / "packs").glob("*.json"))
    assert len(records) == 2
    for record in records:
        rewrite(record, later)
    counts, output = dry_run(work, configfiles=[TINY_WORKFLOW])
    assert dict(counts) == {"tables": 1, "figures": 1, "all": 1, "total": 3}, output  # the tables read the records
    run = results / "runs" / "kd" / "mobilenet_v3_small_T4_soft0.5_seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["model_digest"] = "0" * 64
    (run / "metrics.json").write_text(json.dumps(metrics))
    (record,) = [path for path in records if json.loads(path.read_text())["points"][0]["run"].endswith(run.name)]
    rewrite(record, later + 10)
    counts, output = dry_run(work, configfiles=[TINY_WORKFLOW])
    assert dict(counts) == {"attack": 1, "tables": 1, "figures": 1, "all": 1, "total": 4}, output
    assert f"attacks/kd/{run.name}/fgsm_eps0.1.json" in output and f"evaluation/kd/{run.name}.json" in output
    # a training value changed: every run trains again in this invocation, and so every run is measured again in
    # it (the teacher too, whose attack job has no input but its own record)
    counts, output = dry_run(work, "--config", "training={lr: 0.002}", configfiles=[TINY_WORKFLOW])
    runs = 1 + 1 + 2  # the teacher, the baseline, two distilled points
    assert counts["attack"] == runs, output


def test_points_taken_out_of_the_config_leave_the_tables_in_one_line_and_stay_on_disk(tiny, tmp_path):
    """The finished tiny study with soft_weights [0.9] instead of [0.5, 0.9]: only the study record, the tables
    and the figures are made again (no run, no measurement); the tables and the choice of the best point hold
    w = 0.9 alone, one line of the tables job and of status names the w = 0.5 run left out, and its folder
    and results stay on disk."""
    work = copy_of(tiny, tmp_path / "tiny")
    results = work / "results" / "tiny"
    fewer = ["--config", "soft_weights=[0.9]"]
    counts, _ = dry_run(work, *fewer, configfiles=[TINY_WORKFLOW])
    assert dict(counts) == {"study": 1, "tables": 1, "figures": 1, "all": 1, "total": 4}
    snakemake(work, "--cores", "2", "--show-failed-logs", *fewer, configfiles=[TINY_WORKFLOW])
    found = tables(results)
    assert sorted(found["runs.csv"].query("role == 'kd'")["soft_weight"]) == [0.9]
    assert set(found["robustness.csv"].query("role == 'kd'")["soft_weight"]) == {0.9}
    assert list(found["grid.csv"]["soft_weight"]) == [0.9]
    assert set(found["kd_vs_hard.csv"]["soft_weight"]) == {0.9}
    line = ("not in this study as configured now (kept on disk, left out of every table and choice): 1 run folder: "
            "runs/kd/mobilenet_v3_small_T4_soft0.5_seed0")
    assert line in (results / "logs" / "tables.log").read_text()
    status = subprocess.run([sys.executable, "-m", "kdsweep", "status", "results/tiny"], cwd=work,
                            capture_output=True, text=True, check=True).stdout
    assert line in status
    assert (results / "runs/kd/mobilenet_v3_small_T4_soft0.5_seed0/metrics.json").is_file()
    assert (results / "evaluation/kd/mobilenet_v3_small_T4_soft0.5_seed0.json").is_file()


def test_tiny_study_packed_equals_unpacked(tiny, tmp_path):
    """The tiny study's two distillation points as one pack job: the same metrics as one job each. Both
    are the same computation on this machine (one thread, the same data stream per point), so the
    metrics are compared exactly."""
    pack = ["--config", "runtime={pack_size: 2}"]
    packed = copy_of(tiny, tmp_path / "packed")
    results = packed / "results" / "tiny"
    unpacked = kd_metrics(results)
    # the runs and their packs' records gone (a pack on record keeps its runs, whatever the pack size)
    shutil.rmtree(results / "runs" / "kd")
    shutil.rmtree(results / "packs")
    counts, _ = dry_run(packed, *pack, configfiles=[TINY_WORKFLOW])
    assert counts["distill"] == 1 and not {"train", "stats"} & set(counts)
    snakemake(packed, "--cores", "2", "--show-failed-logs", *pack, configfiles=[TINY_WORKFLOW])
    log = results / "logs/packs/mobilenet_v3_small_seed0_pack1.log"
    assert log.read_text().count("finished results/tiny/runs/kd/") == 2
    packed_metrics = kd_metrics(results)
    assert sorted(unpacked) == sorted(packed_metrics)
    for name, expected in unpacked.items():
        for key in ("epochs", "best_epoch", "val_loss", "val_acc", "test_loss", "test_acc", "config_hash"):
            assert packed_metrics[name][key] == expected[key], (name, key)
    assert len(tables(results)["runs.csv"]) == 4


def test_tiny_study_report_has_every_figure_and_table(tiny, tmp_path):
    tiny = copy_of(tiny, tmp_path / "tiny")
    report = tiny / "report.html"
    snakemake(tiny, "--report", str(report), configfiles=[TINY_WORKFLOW])
    assert report.stat().st_size > 0


def test_tiny_staged_study_resolves_its_checkpoint(tiny, tmp_path):
    """The staged sweep for real: stage 1, the checkpoint's choice, then stage 2 at that temperature,
    on the finished grid study (its teacher, baseline and T = 4 runs are reused)."""
    tiny = copy_of(tiny, tmp_path / "tiny")
    results = tiny / "results" / "tiny"
    staged = ["--config", "sweep=staged", "temperatures=[1,4]", "soft_weights=[0.5,0.9]"]
    counts, _ = dry_run(tiny, *staged, configfiles=[TINY_WORKFLOW])
    assert counts["best_temperature"] == 1 and counts["distill"] == 1  # T=1 at w=0.9; T=4 exists
    snakemake(tiny, "--cores", "2", "--show-failed-logs", *staged, configfiles=[TINY_WORKFLOW])
    choice = json.loads((results / "staged" / "mobilenet_v3_small_seed-all.json").read_text())
    assert choice["temperature"] in (1, 4)
    runs = tables(results)["runs.csv"]
    kd = runs[runs["role"] == "kd"]
    assert set(kd.loc[kd["soft_weight"] == 0.9, "temperature"]) == {1, 4}
    assert set(kd.loc[kd["temperature"] == choice["temperature"], "soft_weight"]) == {0.5, 0.9}


def test_tiny_study_is_in_tensorboard_as_hparams_sessions(tiny):
    """The tables rule's aggregation writes every finished run as an HParams session (issue 15)."""
    pytest.importorskip("tensorboard")
    from test_board import read_sessions

    results = tiny / "results" / "tiny"
    sessions, experiments = read_sessions(results)
    runs = tables(results)["runs.csv"]
    assert sorted(sessions) == sorted(f"{run}/tensorboard" for run in runs["run"])
    for _, row in runs.iterrows():
        hparams, metrics = sessions[f"{row['run']}/tensorboard"]
        assert hparams["role"] == row["role"] and hparams["model"] == row["model"]
        assert {"test_acc", "val_acc", "fgsm_eps0.1", "agreement", "ece"} <= set(metrics)
        assert metrics["test_acc"] == pytest.approx(row["test_acc"], rel=1e-7)  # stored as float32
    assert len(experiments) == 1
