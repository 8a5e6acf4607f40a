# Every finished model run (teacher, baselines, distilled students) is evaluated on
# the test set: under each attack of the config's `attacks` at each epsilon, and
# for fidelity to the teacher, calibration and logit scale (rule evaluate).
# On a cluster all of a run's evaluations go out as one submission: they share
# the group eval_{role}_{run}, which --group-components "eval_{role}_{run}=N"
# (N >= their number; profiles/slurm) lets span them.


rule fgsm:
    input:
        metrics=f"{RESULTS}/runs/{{role}}/{{run}}/metrics.json",
        model=f"{RESULTS}/runs/{{role}}/{{run}}/model.pt",
    output:
        f"{RESULTS}/attacks/{{role}}/{{run}}/fgsm_eps{{eps}}.json",
    log:
        f"{LOGS}/attacks/{{role}}/{{run}}/fgsm_eps{{eps}}.log",
    group:
        "eval_{role}_{run}"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        attack="fgsm",
        epsilon=lambda wildcards: json.dumps(EPSILON[wildcards.eps]),
        run=lambda wildcards, input: os.path.dirname(input.metrics),
        config=attack_config("fgsm"),
    shell:
        "{params.kdsweep} attack --attack {params.attack} --run {params.run:q}"
        " --epsilon {params.epsilon} --out {output:q}"
        " --config {params.defaults} {params.config} runtime.threads={threads}"
        " > {log:q} 2>&1"


use rule fgsm as pgd with:
    output:
        f"{RESULTS}/attacks/{{role}}/{{run}}/pgd_eps{{eps}}.json",
    log:
        f"{LOGS}/attacks/{{role}}/{{run}}/pgd_eps{{eps}}.log",
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        attack="pgd",
        epsilon=lambda wildcards: json.dumps(EPSILON[wildcards.eps]),
        run=lambda wildcards, input: os.path.dirname(input.metrics),
        config=attack_config("pgd"),


rule evaluate:
    input:
        metrics=f"{RESULTS}/runs/{{role}}/{{run}}/metrics.json",
        model=f"{RESULTS}/runs/{{role}}/{{run}}/model.pt",
        teacher=f"{TEACHER_DIR}/model.pt",
        teacher_metrics=f"{TEACHER_DIR}/metrics.json",
    output:
        f"{RESULTS}/evaluation/{{role}}/{{run}}.json",
    log:
        f"{LOGS}/evaluation/{{role}}/{{run}}.log",
    group:
        "eval_{role}_{run}"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        run=lambda wildcards, input: os.path.dirname(input.metrics),
        teacher=lambda wildcards, input: os.path.dirname(input.teacher),
        config=EVALUATION_CONFIG,
    shell:
        "{params.kdsweep} evaluate --run {params.run:q} --teacher {params.teacher:q}"
        " --out {output:q}"
        " --config {params.defaults} {params.config} runtime.threads={threads}"
        " > {log:q} 2>&1"
