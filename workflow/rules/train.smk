# Training: the teacher and the hard-target baselines (rule train, one run per job), and the
# distillation sweep (rule distill, one pack of runtime.pack_size runs per job). A run's
# checkpoint.pt is no output: it survives a failed attempt and the retry resumes from it.
#
# Neither rule declares a run's own files: each job's output is its record (trained/<role>/<run>.json,
# packs/<pack>.json), written after its runs finished. Snakemake deletes a job's outputs before it
# runs it again (--rerun-incomplete after a killed snakemake, a stale job of a failed node, a retry)
# and after it fails; with a record as the output that costs a record, written again in seconds by
# the next job, which finds its runs finished; never a finished run. A job whose run folder another
# job still trains (one of a killed snakemake) waits for it (--wait-for-lock) instead of failing.
#
# Confirmation (confirm.seeds): its baselines are jobs of rule train (role confirm), its
# distilled runs packs of one of rule distill, at the point checkpoint best_point chose.


rule train:
    input:
        stats=STATS,
        runtime=ancient(RUNTIME),
        checkpoint=teacher_checkpoint,
    output:
        LAYOUT.pattern("train_record"),
    log:
        LAYOUT.pattern("train_log"),
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        out=lambda wildcards: LAYOUT.run_dir(trained_run(wildcards)),
        # a teacher from a checkpoint: where it comes from (`--checkpoint ... [--fine-tune]`) before the slice
        config=lambda wildcards: COMMANDS.train_options(trained_run(wildcards))
        + COMMANDS.job_config("train"),
    shell:
        "kdsweep train --role {wildcards.trained} --model {wildcards.model} --seed {wildcards.seed}"
        " --stats {input.stats:q} --out {params.out:q} --record {output:q} --rerun-stale --wait-for-lock"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"


# The runs of a pack share one augmented data stream and one teacher forward pass per batch;
# each keeps its own folder under runs/kd/. The pack record, written once all have
# finished, is the job's output.
rule distill:
    input:
        stats=STATS,
        runtime=ancient(RUNTIME),
        teacher=lambda wildcards: LAYOUT.finished(teacher_of_pack(wildcards)),
        rung=rung_before,
    output:
        LAYOUT.pattern("pack_record"),
    log:
        LAYOUT.pattern("pack_log"),
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        role=lambda wildcards: pack_of(wildcards).role,
        student=lambda wildcards: pack_of(wildcards).student,
        seed=lambda wildcards: pack_of(wildcards).seed,
        points=lambda wildcards: COMMANDS.pack_points(training_pack(wildcards)),
        teacher=lambda wildcards: LAYOUT.run_dir(teacher_of_pack(wildcards)),
        config=COMMANDS.job_config("train"),
    shell:
        "kdsweep distill --student {params.student} --seed {params.seed} --role {params.role}"
        " --teacher {params.teacher:q}"
        " {params.points} --stats {input.stats:q} --record {output:q} --rerun-stale --wait-for-lock"
        " --config {input.runtime:q} {params.config} runtime.threads={threads} >> {log:q} 2>&1"


# Staged sweep: each student's temperature, chosen on validation accuracy.
checkpoint best_temperature:
    input:
        temperature_sweep,
    output:
        LAYOUT.pattern("staged_choice"),
    log:
        LAYOUT.pattern("staged_log"),
    conda:
        CONDA_ENV
    params:
        runs=lambda wildcards: [
            LAYOUT.run_dir(run) for run in PLAN.temperature_sweep(wildcards.student)
        ],
    shell:
        "kdsweep best-temperature --out {output:q} {params.runs:q} >> {log:q} 2>&1"


# Confirmation: each student's distilled point of each method (one that uses the teacher: kd w > 0) with
# the best mean validation accuracy over the sweep's seeds (never test accuracy), trained again on
# confirm.seeds. {choice}: the student (kd), or <student>_<method> (plan.Plan.choice_name).
checkpoint best_point:
    input:
        sweep_finished,
    output:
        LAYOUT.pattern("confirm_record"),
    log:
        LAYOUT.pattern("confirm_log"),
    conda:
        CONDA_ENV
    params:
        runs=lambda wildcards: [
            LAYOUT.run_dir(run) for run in sweep_of(*PLAN.choice(wildcards.choice))
        ],
    shell:
        "kdsweep best-point --out {output:q} {params.runs:q} >> {log:q} 2>&1"


# Successive halving (sweep: halving): a student's points of each KD method judged at a rung on mean
# validation accuracy over the seeds (never test accuracy); the best go on (kdsweep.search.halving).
checkpoint rung_decision:
    input:
        rung_records,
    output:
        LAYOUT.pattern("rung_decision"),
    log:
        LAYOUT.pattern("rung_log"),
    conda:
        CONDA_ENV
    params:
        stage=lambda wildcards: PLAN.rungs.index(int(wildcards.rung)),
        keep=number(config["halving"]["keep"]),
        min_kept=config["halving"]["min_kept"],
        seeds=PLAN.seeds,
    shell:
        "kdsweep rung-decision {input:q} --out {output:q} --student {wildcards.student} --stage {params.stage}"
        " --rung {wildcards.rung} --keep {params.keep} --min-kept {params.min_kept} --seeds {params.seeds}"
        " >> {log:q} 2>&1"
