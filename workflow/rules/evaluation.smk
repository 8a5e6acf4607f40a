# Every finished run (teacher, baselines, distilled students) is evaluated on the test set, in one job per run
# (one process loads the data and the models once for all of it; kdsweep.attacks.job): under every attack of
# the config's `attacks` at every epsilon, their worst case per image (the headline), transfer attacks from the
# teacher and the run's own seed's baseline, the gradient-masking checks, and its fidelity to the teacher,
# calibration and logit scale (kdsweep.evaluation).


rule attack:
    input:
        measured_run,
        runtime=ancient(RUNTIME),
        sources=source_files,
    output:
        LAYOUT.attack_patterns(),
    log:
        LAYOUT.pattern("attack_log"),
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        run=run_dir,
        out=lambda wildcards: LAYOUT.file("attack_dir", role=wildcards.role, run=wildcards.run),
        masking=lambda wildcards: LAYOUT.file("masking", role=wildcards.role, run=wildcards.run),
        evaluation=lambda wildcards: LAYOUT.file("evaluation", role=wildcards.role, run=wildcards.run),
        sources=source_options,
        config=COMMANDS.job_config("attack"),
    shell:
        "kdsweep attack --run {params.run:q} --out-dir {params.out:q} --masking {params.masking:q}"
        " --evaluation {params.evaluation:q}{params.sources}"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"
