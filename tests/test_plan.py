"""The study plan (kdsweep.plan): every run, pack and file a config asks for, without Snakemake.

The workflow wires exactly these (tests/test_workflow.py runs the real Snakemake on them).
"""

import json
import shlex
from collections import Counter
from pathlib import Path

import pytest

from kdsweep import plan as plan_module
from kdsweep.config import coerce_strings, config_hash, load_config
from kdsweep.errors import KdsweepError
from kdsweep.identity import run_identity
from conftest import kd_run
from kdsweep import layout as layout_module
from kdsweep.commands import JOB_SLICES, MACHINE_LOCAL, Commands, job_slice
from kdsweep.layout import Layout
from kdsweep.methods import METHODS
from kdsweep.plan import Pack, Plan, Run

ROOT = Path(__file__).resolve().parents[1]


def study(*overrides):
    return Plan(load_config([str(ROOT / "config.yaml")], overrides))


def commands(plan):
    return Commands(plan, Layout(plan))


TEMPERATURES = (1, 2, 4, 6, 8, 10, 15, 20)


def test_the_reference_study():
    plan = study()
    assert plan.teacher == Run("teacher", "resnet50", 0)
    assert plan.baselines() == [Run("baseline", "resnet18", 0), Run("baseline", "mobilenet_v3_small", 0)]
    runs = plan.fixed_runs()
    # w = 0 is the baseline at every T: 8 temperatures x the 6 soft weights above 0 per student; the
    # confirmation (on by default, 3 fresh seeds) adds its baselines
    assert Counter(run.role for run in runs) == {"teacher": 1, "baseline": 2, "kd": 2 * 8 * 6, "confirm": 2 * 3}
    assert len(set(runs)) == len(runs) == 105
    kd = [run for run in runs if run.role == "kd"]
    assert {(run.temperature, run.soft_weight) for run in kd if run.model == "resnet18"} == {
        (t, w) for t in TEMPERATURES for w in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    # the grid's 8 teacher-free points (w = 0), each the baseline
    assert plan.teacher_free == {"kd": {kd_run("kd", "m", 0, t, 0.0).hparams: "baseline" for t in TEMPERATURES}}
    assert all(run.needs_teacher for pack in plan.packs for run in pack.runs)
    # one sweep pack per point, named after it; every distilled run in exactly one pack
    sweep = [pack for pack in plan.packs if pack.role == "kd"]
    assert len(sweep) == 96 and all(len(pack.runs) == 1 for pack in plan.packs)
    assert {pack.name for pack in sweep} == {run.name for run in kd}
    # files: 105 runs x (evaluation + masking record + (6 attacks + their worst case) x 3 epsilons) + 96 pack
    # records + 9 train records (teacher, 2 baselines, 6 confirmation baselines)
    outputs = Layout(plan).outputs(runs)
    assert len(outputs) == len(set(outputs)) == 105 * (2 + 7 * 3) + 96 + 9
    assert "results/cifar10-reference/packs/resnet18_T4_soft0.9_seed0.json" in outputs
    assert "results/cifar10-reference/attacks/kd/resnet18_T4_soft0.9_seed0/pgd_eps0.05.json" in outputs
    assert not [path for path in outputs if "_soft0_" in path]
    assert Layout(plan).finished(plan.teacher) == ["results/cifar10-reference/trained/teacher/resnet50_seed0.json"]


def test_no_teacher_free_point_trains_twice():
    """Every method's points that use no teacher: those whose loss is the baseline's (kd w = 0, dkd alpha = beta
    = 0, ctkd w = 0, lskd soft_weight 0 at hard_weight 1) train nowhere; lskd's at hard_weight 0.5, whatever T,
    are one run per student and seed (the grid's first). The points that use the teacher all train."""
    plan = study("soft_weights=[0.0, 0.9]", "temperatures=[2, 4]", "seeds=[0,1]",
                 "methods={kd: {}, dkd: {alpha: [0, 1], beta: [0, 8], temperature: [2, 4]}, "
                 "lskd: {temperature: [2, 3], hard_weight: [0.5, 1], soft_weight: [0, 9]}, ctkd: {soft_weight: [0, 0.9]}}")
    trained = Counter((run.method, run.hparams) for pack in plan.packs if pack.role != "confirm" for run in pack.runs)
    assert set(trained.values()) == {4}  # each point once per student (2) and seed (2)
    points = {method: [dict(hparams) for m, hparams in trained if m == method] for method in plan.methods}
    assert [(p["temperature"], p["soft_weight"]) for p in points["kd"]] == [(2, 0.9), (4, 0.9)]
    assert len(points["dkd"]) == 2 * 2 * 2 - 2 and all(p["alpha"] or p["beta"] for p in points["dkd"])
    assert [p["soft_weight"] for p in points["ctkd"]] == [0.9]
    lskd = [(p["temperature"], p["hard_weight"], p["soft_weight"]) for p in points["lskd"]]
    assert lskd == [(2, 0.5, 0), (2, 0.5, 9), (2, 1, 9), (3, 0.5, 9), (3, 1, 9)]
    free = plan.teacher_free
    shared = next(hparams for hparams in free["lskd"] if dict(hparams)["hard_weight"] == 0.5)
    assert {dict(h)["temperature"]: target for h, target in free["lskd"].items() if dict(h)["hard_weight"] == 0.5} == {
        2: shared, 3: shared}
    assert [target for h, target in free["lskd"].items() if dict(h)["hard_weight"] == 1] == ["baseline", "baseline"]
    assert len(free["kd"]) == 2 and len(free["dkd"]) == 2 and len(free["ctkd"]) == 1
    assert all(target == "baseline" for method in ("kd", "dkd", "ctkd") for target in free[method].values())
    # the confirmation chooses among the distilled points only
    assert all(METHODS[method].needs_teacher(dict(h)) for method in plan.methods
               for h in plan.candidates("resnet18", method))


def test_equal_budgets_give_every_method_the_smallest_grids_count_by_a_seeded_subsample():
    methods = [str(ROOT / "config.yaml"), str(ROOT / "studies" / "methods.yaml")]
    unequal = Plan(load_config(methods))
    assert {name: len(points) for name, points in unequal.points.items()} == {"kd": 48, "dkd": 8, "lskd": 4, "ctkd": 4}
    equal = Plan(load_config(methods, ["budget.equal=true"]))
    assert {name: len(points) for name, points in equal.points.items()} == {"kd": 4, "dkd": 4, "lskd": 4, "ctkd": 4}
    for name, points in equal.points.items():
        grid = unequal.points[name]
        assert [point for point in grid if point in points] == points  # a subset, in the grid's order
    # the same points for every student and seed, and on every call
    assert Plan(load_config(methods, ["budget.equal=true"])).points == equal.points
    for student in equal.students:
        assert [run.hparams for run in equal.method_grid("dkd", [student]) if run.seed == 0] == equal.points["dkd"]
    # the seed draws another subsample (of kd's 48 points, 4 again)
    other = Plan(load_config(methods, ["budget.equal=true", "budget.seed=1"]))
    assert len(other.points["kd"]) == 4 and other.points["kd"] != equal.points["kd"]
    assert plan_module.subsample("kd", unequal.points["kd"], 4, 0) == equal.points["kd"]
    with pytest.raises(KdsweepError, match="budget.equal subsamples each method's grid, but sweep: staged"):
        Plan(load_config(methods, ["budget.equal=true", "sweep=staged"]))


def test_equal_budgets_count_distilled_points_only_and_refuse_a_method_with_none():
    """budget.equal counts the points that use the teacher: a shared teacher-free run (lskd at hard weight 0.1,
    soft weight 0) is no candidate, so it neither counts as one of lskd's points nor shrinks kd's, and still
    trains beside them. A method whose grid holds no distilled point is refused, not given every method's
    budget of none."""
    plan = study("budget.equal=true", "budget.seed=3", "confirm.seeds=[]",
                 "methods={kd: {}, lskd: {temperature: [2, 3], hard_weight: [0.1], soft_weight: [0, 9]}}")
    distilled = {name: [p for p in points if METHODS[name].needs_teacher(dict(p))] for name, points in plan.points.items()}
    assert {name: len(points) for name, points in distilled.items()} == {"kd": 2, "lskd": 2}
    shared = [p for p in plan.points["lskd"] if not METHODS["lskd"].needs_teacher(dict(p))]
    assert [(dict(p)["temperature"], dict(p)["soft_weight"]) for p in shared] == [(2, 0)]
    trained = Counter(run.method for pack in plan.packs for run in pack.runs if run.seed == 0 and run.model == "resnet18")
    assert trained == {"kd": 2, "lskd": 3}  # lskd's 2 distilled points and its one teacher-free run
    for soft_weights, methods in (("[0.0]", "{kd: {}, dkd: {beta: [1, 8]}}"),
                                  ("[0.9]", "{kd: {}, lskd: {hard_weight: [0.1], soft_weight: [0]}}")):
        bare = "kd" if soft_weights == "[0.0]" else "lskd"
        with pytest.raises(KdsweepError, match=f"budget.equal .* but {bare}'s grid has no point that uses the teacher"
                                               f".*give {bare} a point that uses the teacher, or leave it out"):
            study(f"soft_weights={soft_weights}", "confirm.seeds=[]", "budget.equal=true", f"methods={methods}")
        assert study(f"soft_weights={soft_weights}", "confirm.seeds=[]", f"methods={methods}")  # without it, planned


def test_names_and_folders():
    run = kd_run("kd", "resnet18", 3, 4.0, 0.9)
    assert run.name == "resnet18_T4_soft0.9_seed3" and run.folder == "runs/kd/resnet18_T4_soft0.9_seed3"
    assert Run("baseline", "resnet18", 0).folder == "runs/baseline/resnet18_seed0"
    assert layout_module.attack_file("fgsm", 8 / 255) == "fgsm_eps0.0313725.json"
    assert plan_module.fmt(1.0) == "1" and plan_module.fmt(0.10) == "0.1" and plan_module.fmt(2.5) == "2.5"
    for bad in (dict(temperature=0, soft_weight=0.5), dict(temperature=4, soft_weight=1.5),
                dict(temperature=None, soft_weight=0.5)):
        with pytest.raises(KdsweepError):
            kd_run("kd", "resnet18", 0, **bad)
    with pytest.raises(KdsweepError, match="role"):
        Run("student", "resnet18", 0)
    assert not kd_run("kd", "resnet18", 0, 4, 0.0).needs_teacher and kd_run("kd", "resnet18", 0, 4, 0.1).needs_teacher


def test_a_distilled_run_from_the_config_hashes_as_its_job_does():
    """The config's `4` and the distill job's `--temperature 4` (a float) are one run with one hash:
    the status view compares the plan's runs with the hashes the jobs wrote."""
    config = load_config([str(ROOT / "config.yaml")], [])
    from_config, from_command = kd_run("kd", "resnet18", 0, 4, 1), kd_run("kd", "resnet18", 0, 4.0, 1.0)
    # the job's command keeps the config's spelling (its params: a changed spelling would rerun it)
    assert "--temperature 4 --soft-weight 1 " in commands(study()).pack_points(Pack("p", (from_config,))) + " "
    assert config_hash(run_identity(config, from_config, "t", "d")) == config_hash(
        run_identity(config, from_command, "t", "d"))
    assert Run("baseline", "resnet18", 0).temperature is None


def test_every_file_pattern_is_filled_by_the_plan_for_a_run():
    """The rules' outputs are Layout.pattern(kind); the layout's paths for a run are those patterns filled in."""
    plan = study("confirm.seeds=[5]")
    teacher, kd = plan.teacher, plan.packs[0].runs[0]
    assert Layout(plan).train_record(teacher) == Layout(plan).pattern("train_record").format(
        trained="teacher", model="resnet50", seed=0) == "results/cifar10-reference/trained/teacher/resnet50_seed0.json"
    assert Layout(plan).training_log(teacher) == "results/cifar10-reference/logs/runs/teacher/resnet50_seed0.log"
    assert Layout(plan).training_log(kd) == f"results/cifar10-reference/logs/packs/{plan.packs[0].name}.log"
    assert Layout(plan).staged_choice("resnet18") == "results/cifar10-reference/staged/resnet18_seed-all.json"
    assert Layout(plan).confirm_record("resnet18") == "results/cifar10-reference/confirm/resnet18.json"
    *attacks, evaluation, masking = Layout(plan).evaluations(kd)
    assert evaluation == f"results/cifar10-reference/evaluation/kd/{kd.name}.json"
    assert masking == f"results/cifar10-reference/masking/kd/{kd.name}.json"
    assert f"results/cifar10-reference/attacks/kd/{kd.name}/fgsm_eps0.05.json" in attacks
    packed = study("runtime.pack_size=8")
    runs = packed.sweep("resnet18")
    files = Layout(packed)
    assert files.finished_files(runs) == list(dict.fromkeys(files.pack_record(packed.pack_of(run)) for run in runs))
    assert len(files.finished_files(runs)) == 6  # 48 points (the grid's 56 but w = 0) in packs of 8
    for kind in layout_module.FILES:
        assert "{" not in Layout(plan).file(kind, trained="t", model="m", seed=0, pack="p", student="s", role="r", choice="c",
                                    run="n", attack="a", eps="0.1", rung=4), kind


@pytest.mark.parametrize("pack_size", [1, 3, 8])
def test_packs_cover_every_point_once_within_one_student_and_seed(pack_size):
    plan = study(f"runtime.pack_size={pack_size}", "seeds=[0,1]", "confirm.seeds=[]")
    kd = [run for run in plan.fixed_runs() if run.role == "kd"]
    packed = [run for pack in plan.packs for run in pack.runs]
    assert sorted(packed, key=str) == sorted(kd, key=str) and len(set(packed)) == len(packed) == 2 * 2 * 48
    for pack in plan.packs:
        assert 1 <= len(pack.runs) <= pack_size
        assert {(run.model, run.seed) for run in pack.runs} == {(pack.student, pack.seed)}
        assert all(plan.pack_of(run) is pack for run in pack.runs)
    # per student and seed: ceil(48 / pack_size) packs (the grid's 56 points but w = 0)
    assert len(plan.packs) == 2 * 2 * -(-48 // pack_size)
    if pack_size > 1:
        assert plan.packs[0].name == "resnet18_seed0_pack1"
    names = [pack.name for pack in plan.packs]
    assert len(set(names)) == len(names)


def _record_packs(packs, results):
    """Pack records on disk as their jobs write them (one point per run, its folder as the job was given it)."""
    from kdsweep.records import JobPoint, JobRecord

    for pack in packs:
        JobRecord(points=[JobPoint(run=f"results/cifar10-reference/{run.folder}", config_hash="h") for run in pack.runs],
                  until_epoch=pack.until).write(results / "packs" / f"{pack.name}.json")


def _packing(plan):
    return [(pack.name, pack.runs) for pack in plan.packs]


@pytest.mark.parametrize("halving", [False, True])
def test_packs_trained_before_keep_their_runs_whatever_the_pack_size_and_new_runs_are_packed_around_them(
        tmp_path, halving):
    """Three packs of 8 trained (their records on disk, halving: of the first rung), then pack_size 3 and a new
    temperature: the three keep their names and runs (their jobs are the same, nothing reruns); every other run
    is packed 3 at a time, under a name no record holds; and the plan is a fixed point: the records of its own
    new packs, written in any order, change none of its packs."""
    results = tmp_path / "results" / "cifar10-reference"
    search = ["sweep=halving"] if halving else []
    before = study("runtime.pack_size=8", "students=[resnet18]", "confirm.seeds=[]", *search)
    trained = [pack for pack in before.packs if pack.stage in (None, 0)][:3]
    _record_packs(trained, results)
    config = load_config([str(ROOT / "config.yaml")], ["runtime.pack_size=3", "students=[resnet18]", "confirm.seeds=[]",
                                                       "temperatures=[1, 2, 3, 4, 6, 8, 10, 15, 20]", *search])
    after = Plan(config, plan_module.recorded_packs(results))
    first = [pack for pack in after.packs if pack.stage in (None, 0)]
    for pack in trained:
        assert (pack.name, pack.runs) in [(p.name, p.runs) for p in first]
    kd = [run for run in after.grid(["resnet18"]) if run.seed == 0]  # every point (halving: of the first rung)
    assert sorted((run for pack in first for run in pack.runs), key=str) == sorted(kd, key=str)
    assert len({pack.name for pack in after.packs}) == len(after.packs)
    new = [pack for pack in first if pack not in trained]
    assert all(1 <= len(pack.runs) <= 3 for pack in new)
    assert not {pack.name for pack in new} & {pack.name for pack in trained}
    # the runs at T = 3 and those after the 24th of the 8-packs are the new ones
    assert {run for pack in new for run in pack.runs} == set(kd) - {run for pack in trained for run in pack.runs}
    for order in (new, list(reversed(new))[::2]):
        _record_packs(order, results)
        assert _packing(Plan(config, plan_module.recorded_packs(results))) == _packing(after)
    # without records: the packs of today, named <student>_seed<s>_pack<i>
    assert [pack.name for pack in Plan(config).packs][0].startswith("resnet18_seed0_pack1")


def test_a_pack_known_from_a_later_stage_gets_back_its_other_runs(tmp_path):
    """Halving: a pack's first-rung record gone, its last stage's (the survivors) on disk: the pack is the one the
    pack size makes, not its survivors alone (its jobs' params are those they were)."""
    results = tmp_path / "results" / "cifar10-reference"
    plan = study("runtime.pack_size=8", "students=[resnet18]", "sweep=halving")
    final = next(pack for pack in plan.packs if pack.stage == 2)
    _record_packs([Pack(final.name, final.runs[:2], 2)], results)
    assert _packing(Plan(plan.config, plan_module.recorded_packs(results))) == _packing(plan)


def test_a_study_files_spelling_is_no_change_of_any_jobs_params():
    """Keys in another order, a default restated, 1.0 for 1: every job's params (its config slice on the command
    line, the study record's) are the same string; a changed value is not."""
    from kdsweep.commands import canonical, command_line

    config = load_config([str(ROOT / "config.yaml")])
    plan = Plan(config)
    spelled = json.loads(json.dumps(config))
    spelled["training"] = dict(reversed(list(spelled["training"].items())))  # keys reordered
    spelled = dict(reversed(list(spelled.items())))
    spelled["training"]["lr"] = 1.0e-3  # the default, restated
    spelled["augmentation"]["rotation_degrees"] = 15.0  # 1.0 for 1
    spelled["training"]["lr_factor"] = 0.2
    spelled["temperatures"] = [float(t) for t in spelled["temperatures"]]
    respelled = Plan(spelled)
    for kind in ("stats", "train", "attack"):
        assert commands(respelled).job_config(kind) == commands(plan).job_config(kind)
    assert commands(respelled).study_config() == commands(plan).study_config()
    assert commands(respelled).machine_local() == commands(plan).machine_local()
    assert [commands(respelled).pack_points(pack) for pack in respelled.packs] == [
        commands(plan).pack_points(pack) for pack in plan.packs]
    # (config.yaml's own spelling: its whole numbers stay integers, its keys in its order)
    assert canonical(config) == config and list(canonical(spelled)) == list(config)
    assert command_line({"a": {"b": 1.0, "c": 0.5}}) == "a.b=1 a.c=0.5"
    # how the workflow groups its jobs is not the study: a new pack_size is the same study record
    assert commands(study("runtime.pack_size=8")).study_config() == commands(plan).study_config()
    assert commands(study("training.lr=0.002")).job_config("train") != commands(plan).job_config("train")


def test_a_pack_command_line_gives_the_exact_numbers():
    plan = study("runtime.pack_size=2", "temperatures=[2.5]", "soft_weights=[0.3, 0.9]", "students=[resnet18]",
                 "confirm.seeds=[]")
    (pack,) = plan.packs
    args = shlex.split(commands(plan).pack_points(pack))
    assert args == ["--temperature", "2.5", "--soft-weight", "0.3", "--out",
                    "results/cifar10-reference/runs/kd/resnet18_T2.5_soft0.3_seed0",
                    "--temperature", "2.5", "--soft-weight", "0.9", "--out",
                    "results/cifar10-reference/runs/kd/resnet18_T2.5_soft0.9_seed0"]
    assert Layout(plan).pack_record(pack) == "results/cifar10-reference/packs/resnet18_seed0_pack1.json"


def test_the_staged_sweep():
    plan = study("sweep=staged", "runtime.pack_size=4")
    stage_one = [run for run in plan.fixed_runs() if run.role == "kd"]
    assert {(run.model, run.soft_weight) for run in stage_one} == {("resnet18", 0.9), ("mobilenet_v3_small", 0.9)}
    assert sorted(run.temperature for run in plan.temperature_sweep("resnet18")) == [1, 2, 4, 6, 8, 10, 15, 20]
    stage_two = plan.soft_weight_sweep("resnet18", 4)
    # w = 0 is the baseline: stage 2 trains the soft weights above it
    assert [(run.temperature, run.soft_weight) for run in stage_two] == [(4, w) for w in (.1, .3, .5, .7, .9, 1)]
    # every stage-2 candidate has a pack; the point stage 1 trained already (T=4, w=0.9) stays in stage 1's
    assert all(plan.pack_of(run) for run in stage_two)
    assert plan.pack_of(kd_run("kd", "resnet18", 0, 4, 0.9)) in [plan.pack_of(r) for r in plan.temperature_sweep("resnet18")]
    assert len({plan.pack_of(run).name for run in plan.temperature_sweep("resnet18")}) == 2  # 8 points / 4
    assert plan.search.temperature(plan, {"temperature": 4.0}, "x.json") == 4
    with pytest.raises(KdsweepError, match="not in the config's temperatures"):
        plan.search.temperature(plan, {"temperature": 3.0}, "x.json")


def test_several_seeds_multiply_the_student_runs_not_the_teacher():
    plan = study("seeds=[0,1,2]")
    assert Counter(run.role for run in plan.fixed_runs()) == {"teacher": 1, "baseline": 6, "kd": 288, "confirm": 6}


def test_number_spellings_find_the_config_numbers_and_refuse_collisions():
    plan = study("epsilons=[0.0313725490196, 0.1]", "temperatures=[4.0, 2.5]")
    assert plan.epsilons == {"0.0313725": 0.0313725490196, "0.1": 0.1}
    assert plan.temperatures == {"4": 4.0, "2.5": 2.5}
    with pytest.raises(KdsweepError, match="share the folder name '4'"):
        study("temperatures=[4, 4.0000001]")
    assert study("sweep=staged", "staged.soft_weight=0.45").soft_weights["0.45"] == 0.45


def test_a_run_is_found_by_its_folder_name():
    plan = study()
    assert plan.run("kd", "resnet18_T4_soft0.9_seed0") == kd_run("kd", "resnet18", 0, 4, 0.9)
    assert plan.run("teacher", "resnet50_seed0") == plan.teacher
    with pytest.raises(KdsweepError, match="not part of study"):
        plan.run("kd", "resnet18_T3_soft0.9_seed0")


def test_a_job_reads_exactly_its_slice_and_a_runs_identity_is_what_changes_its_result():
    config = load_config([str(ROOT / "config.yaml")])
    data = {key: config["dataset"][key] for key in ("name", "subset", "val_fraction", "split_seed")}
    assert job_slice(config, "train") == {"dataset": data, "training": config["training"],
                                          "augmentation": config["augmentation"]}
    # one attack job per run runs the whole suite (kdsweep.attacks.job): every attack, epsilon and the headline's
    # rules, and the run's evaluation
    assert job_slice(config, "attack") == {"dataset": data, "training": {"eval_batch_size": 1000},
                                           "epsilons": config["epsilons"], "attacks": config["attacks"],
                                           "robustness": config["robustness"], "evaluation": config["evaluation"]}
    assert set(JOB_SLICES) == {"stats", "train", "attack"}
    # the command line of a job sets exactly its slice: read back, it is the slice again
    plan = Plan(config)
    for kind, attack in (("train", None), ("attack", "fgsm"), ("attack", "pgd")):
        read_back = load_config([], shlex.split(commands(plan).job_config(kind, attack)))
        assert job_slice(read_back, kind, attack) == job_slice(config, kind, attack)
    # where the data lies and the runtime section are machine-local: in no job's params, not in a
    # run's identity; every job reads them from one file (the machine-local overrides)
    run = kd_run("kd", "resnet18", 0, 4, 0.9)
    changed = load_config([str(ROOT / "config.yaml")], ["runtime.precision=fp32", "runtime.compile=true",
                                                         "dataset.root=/elsewhere/data"])
    for kind, attack in (("stats", None), ("train", None), ("attack", "fgsm")):
        assert commands(Plan(changed)).job_config(kind, attack) == commands(plan).job_config(kind, attack)
    assert run_identity(changed, run, "t", "d") == run_identity(config, run, "t", "d")
    # what changes a result changes the identity: the teacher, the data's digest, any training value
    assert run_identity(config, run, "t", "d") != run_identity(config, run, "u", "d")
    assert run_identity(config, run, "t", "d") != run_identity(config, run, "t", "e")
    lr = load_config([str(ROOT / "config.yaml")], ["training.lr=0.002"])
    assert run_identity(lr, run, "t", "d") != run_identity(config, run, "t", "d")
    local = load_config([], shlex.split(commands(Plan(changed)).machine_local()))
    assert local["runtime"]["precision"] == "fp32" and local["runtime"]["compile"] is True
    assert local["dataset"]["root"] == "/elsewhere/data"
    assert MACHINE_LOCAL == ("dataset.root", "runtime")


def test_tables_and_figures_are_those_the_aggregation_and_plots_write():
    from kdsweep import plots, tables

    plan = study()
    assert [Path(path).name for path in Layout(plan).tables()] == list(layout_module.TABLES) == list(tables.TABLES)
    assert sorted(Path(path).name for path, *_ in Layout(plan).figures()) == sorted(plots.figure_names(plan.students))
    methods = study("methods={dkd: {}, ctkd: {}}")
    assert sorted(Path(path).name for path, *_ in Layout(methods).figures()) == sorted(
        plots.figure_names(methods.students, methods.methods))


def test_snakemake_config_strings_are_read_as_yaml_where_the_schema_wants_numbers():
    config = load_config([str(ROOT / "config.yaml")])
    config.update(seeds=["0", "1"], epsilons=["0.0313725490196"])
    config["attacks"]["pgd"] = "null"
    config["training"]["lr"] = "1e-3"
    config["runtime"].update(channels_last="true", precision="auto", pack_size="2")
    config["dataset"].update(subset="null", root="2024")  # a folder named like a number stays a string
    got = coerce_strings(json.loads(json.dumps(config)))
    assert got["seeds"] == [0, 1] and got["epsilons"] == [0.0313725490196] and got["attacks"]["pgd"] is None
    assert got["training"]["lr"] == 0.001 and got["runtime"]["channels_last"] is True
    assert got["runtime"]["precision"] == "auto" and got["runtime"]["pack_size"] == 2
    assert got["dataset"]["subset"] is None and got["dataset"]["root"] == "2024"


def test_confirmation_without_a_distilled_point_is_refused_before_any_job():
    """soft_weights all 0 (hard targets only) leave the confirmation nothing to choose: the plan (and so
    snakemake's dry run) refuses the study with the reason, instead of failing after all its training."""
    config = load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")], ["soft_weights=[0.0]"])
    with pytest.raises(KdsweepError, match="confirm.seeds is set, but resnet18's kd sweep has no distilled point"):
        Plan(config)
    staged = load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")],
                         ["soft_weights=[0.0]", "sweep=staged", "staged.soft_weight=0.0"])
    with pytest.raises(KdsweepError, match="staged.soft_weight is 0: at w = 0 every temperature trains the "
                                           "hard-target baseline"):
        Plan(staged)
    Plan(load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")],
                     ["soft_weights=[0.0]", "confirm.seeds=[]"]))  # without confirmation: a valid study
