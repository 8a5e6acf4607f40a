# Every finished run (teacher, baselines, distilled students) is evaluated on the test set: under every
# attack of the config's `attacks` at every epsilon, their worst case per image (the headline), transfer
# attacks from the teacher and the run's own seed's baseline and the gradient-masking checks (rule attack,
# one job per run: one process loads the data and the models once for all of them; kdsweep.attacks.job), and
# for fidelity to the teacher, calibration and logit scale (rule evaluate). On a cluster both of a run's
# evaluations go out as one submission: they share the group eval_{role}_{run}, which --group-components
# "eval_{role}_{run}=N" (N >= their number; profiles/default, the workflow profile) lets span them.


rule attack:
    input:
        finished("attack"),
        runtime=ancient(RUNTIME),
        sources=transfer_sources,
    output:
        LAYOUT.attack_patterns(),
    log:
        LAYOUT.pattern("attack_log"),
    group:
        "eval_{role}_{run}"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        run=run_dir,
        out=lambda wildcards: LAYOUT.file("attack_dir", role=wildcards.role, run=wildcards.run),
        masking=lambda wildcards: LAYOUT.file("masking", role=wildcards.role, run=wildcards.run),
        sources=transfer_options,
        config=COMMANDS.job_config("attack"),
    shell:
        "kdsweep attack --run {params.run:q} --out-dir {params.out:q} --masking {params.masking:q}{params.sources}"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"


rule evaluate:
    input:
        finished("evaluate"),
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
