# Every finished run (teacher, baselines, distilled students) is evaluated on the test set:
# under each attack of the config's `attacks` at each epsilon (rule attack, one job per run,
# attack and epsilon), and for fidelity to the teacher, calibration and logit scale (rule
# evaluate). On a cluster all of a run's evaluations go out as one submission: they share the
# group eval_{role}_{run}, which --group-components "eval_{role}_{run}=N" (N >= their
# number; profiles/default, the workflow profile) lets span them.


rule attack:
    input:
        finished,
        runtime=ancient(RUNTIME),
    output:
        LAYOUT.pattern("attack"),
    log:
        LAYOUT.pattern("attack_log"),
    group:
        "eval_{role}_{run}"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        run=run_dir,
        # the config's number itself, not its folder spelling
        epsilon=lambda wildcards: number(PLAN.epsilons[wildcards.eps]),
        config=lambda wildcards: COMMANDS.job_config("attack", wildcards.attack),
    shell:
        "kdsweep attack --attack {wildcards.attack} --run {params.run:q}"
        " --epsilon {params.epsilon} --out {output:q}"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"


rule evaluate:
    input:
        finished,
        runtime=ancient(RUNTIME),
        teacher=lambda wildcards: LAYOUT.finished(teacher_of_run(wildcards)),
    output:
        LAYOUT.pattern("evaluation"),
    log:
        LAYOUT.pattern("evaluation_log"),
    group:
        "eval_{role}_{run}"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        run=run_dir,
        teacher=lambda wildcards: LAYOUT.run_dir(teacher_of_run(wildcards)),
        config=COMMANDS.job_config("evaluate"),
    shell:
        "kdsweep evaluate --run {params.run:q} --teacher {params.teacher:q} --out {output:q}"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"
