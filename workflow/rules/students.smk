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
        # the config's numbers themselves, not their folder spelling
        temperature=lambda wildcards: json.dumps(TEMPERATURE[wildcards.T]),
        soft_weight=lambda wildcards: json.dumps(SOFT_WEIGHT[wildcards.w]),
        teacher=lambda wildcards, input: os.path.dirname(input.teacher),
        run=lambda wildcards, output: os.path.dirname(output.metrics),
        config=TRAIN_CONFIG,
    shell:
        "{params.kdsweep} distill --student {wildcards.model} --teacher {params.teacher:q}"
        " --temperature {params.temperature} --soft-weight {params.soft_weight}"
        " --seed {wildcards.seed} --stats {input.stats:q} --out {params.run:q}"
        " --config {params.defaults} {params.config} runtime.threads={threads}"
        " > {log:q} 2>&1"


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
