# Students: a hard-target baseline per student and seed, and the distillation sweep.
# grid: every temperature x soft weight. staged: the temperatures at staged.soft_weight,
# then the soft weights at each student's best temperature (checkpoint best_temperature).


rule baseline:
    input:
        stats=STATS,
    output:
        metrics=f"{RESULTS}/runs/baseline/{{model}}_seed{{seed}}/metrics.json",
        history=f"{RESULTS}/runs/baseline/{{model}}_seed{{seed}}/history.csv",
        model=f"{RESULTS}/runs/baseline/{{model}}_seed{{seed}}/model.pt",
    log:
        f"{LOGS}/runs/baseline/{{model}}_seed{{seed}}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        run=lambda wildcards, output: os.path.dirname(output.metrics),
        config=TRAIN_CONFIG,
    shell:
        "{params.kdsweep} train --role baseline --model {wildcards.model} --seed {wildcards.seed}"
        " --stats {input.stats:q} --out {params.run:q}"
        " --config {params.defaults} {params.config} runtime.threads={threads}"
        " > {log:q} 2>&1"


# One command for both kinds of distill job: the --temperature/--soft-weight/--out
# triples of its points (one, or runtime.pack_size) after the student and seed.
DISTILL_SHELL = (
    "{params.kdsweep} distill --student {params.student} --teacher {params.teacher:q}"
    " {params.points} --seed {params.seed} --stats {input.stats:q}"
    " --config {params.defaults} {params.config} runtime.threads={threads}"
    " > {log:q} 2>&1"
)


rule distill:
    input:
        stats=STATS,
        teacher=f"{TEACHER_DIR}/model.pt",
        teacher_metrics=f"{TEACHER_DIR}/metrics.json",
    output:
        metrics=f"{RESULTS}/runs/kd/{{model}}_T{{T}}_soft{{w}}_seed{{seed}}/metrics.json",
        history=f"{RESULTS}/runs/kd/{{model}}_T{{T}}_soft{{w}}_seed{{seed}}/history.csv",
        model=f"{RESULTS}/runs/kd/{{model}}_T{{T}}_soft{{w}}_seed{{seed}}/model.pt",
    log:
        f"{LOGS}/runs/kd/{{model}}_T{{T}}_soft{{w}}_seed{{seed}}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        student=lambda wildcards: wildcards.model,
        seed=lambda wildcards: wildcards.seed,
        # the config's numbers themselves, not their folder spelling
        points=one_point,
        teacher=lambda wildcards, input: os.path.dirname(input.teacher),
        config=TRAIN_CONFIG,
    shell:
        DISTILL_SHELL


# runtime.pack_size > 1: one job per pack of sweep points (common.smk, distill_packs),
# each point still in its own run folder. A pack is one rule of its own, since the
# files of several points cannot share one wildcard pattern.
DISTILL_PACKS = distill_packs()
for pack_rule, pack in DISTILL_PACKS:

    rule:
        name:
            pack_rule
        input:
            stats=STATS,
            teacher=f"{TEACHER_DIR}/model.pt",
            teacher_metrics=f"{TEACHER_DIR}/metrics.json",
        output:
            [
                f"{run_dir(*run)}/{name}"
                for run in pack
                for name in ("metrics.json", "history.csv", "model.pt")
            ],
        log:
            f"{LOGS}/runs/kd/{pack_rule}.log",
        conda:
            CONDA_ENV
        threads: THREADS
        params:
            kdsweep=kdsweep,
            defaults=defaults,
            student=pack[0][1],
            # a string, as rule distill's wildcard: the same params, so a new pack_size reruns nothing
            seed=str(pack[0][2]),
            points=point_args(pack),
            teacher=lambda wildcards, input: os.path.dirname(input.teacher),
            config=TRAIN_CONFIG,
        shell:
            DISTILL_SHELL


# A run of a pack comes from its pack, never from the one-point rule; and a pack
# job asks for what a distill job asks for (threads and resources, as the profile
# sets them for rule distill: profiles/slurm needs no entry per pack).
if DISTILL_PACKS:
    workflow.ruleorder(*[name for name, _ in DISTILL_PACKS], "distill")
DISTILL_RESOURCES = workflow.get_rule("distill").resources
for pack_rule, _ in DISTILL_PACKS:
    workflow.get_rule(pack_rule).resources = DISTILL_RESOURCES.copy()


checkpoint best_temperature:
    input:
        temperature_sweep_metrics,
    output:
        f"{RESULTS}/staged/{{student}}_seed-all.json",
    log:
        f"{LOGS}/staged/{{student}}_seed-all.log",
    conda:
        CONDA_ENV
    params:
        kdsweep=kdsweep,
        runs=lambda wildcards, input: folders(input),
    shell:
        "{params.kdsweep} best-temperature --out {output:q} {params.runs:q} > {log:q} 2>&1"
