# What every job starts from: the dataset (torchvision's files, downloaded on the submit host),
# the split's statistics, and the runtime section (results/<study>/runtime.yaml).


# Rewritten whenever the config's runtime section changes (params); every job takes it as
# an ancient() input, so that rewriting it reruns nothing.
localrules:
    runtime,
    study,


rule runtime:
    output:
        RUNTIME,
    log:
        f"{LOGS}/runtime.log",
    conda:
        CONDA_ENV
    params:
        runtime=PLAN.runtime(),
    shell:
        "kdsweep config --section runtime --out {output:q} {params.runtime} > {log:q} 2>&1"


# The whole config the workflow runs with, rewritten whenever it changes: what
# `python -m kdsweep status results/<study>` reads. No job reads it (rule all asks for it).
rule study:
    output:
        PLAN.study_record(),
    log:
        f"{LOGS}/study.log",
    conda:
        CONDA_ENV
    params:
        config=PLAN.study_config(),
    shell:
        "kdsweep config --out {output:q} {params.config} > {log:q} 2>&1"


if DATASET_DIR:

    # on the submit host: compute nodes often have no internet access
    localrules:
        download,

    rule download:
        output:
            directory(DATASET_DIR),
        log:
            f"{LOGS}/download.log",
        conda:
            CONDA_ENV
        params:
            config=PLAN.job_config("stats"),
        shell:
            "kdsweep download {params.config} > {log:q} 2>&1"


rule stats:
    input:
        # ancient: the dataset folder's timestamp never reruns the study
        [ancient(DATASET_DIR)] if DATASET_DIR else [],
    output:
        STATS,
    log:
        f"{LOGS}/stats.log",
    conda:
        CONDA_ENV
    params:
        config=PLAN.job_config("stats"),
    shell:
        "kdsweep stats --out {output:q} {params.config} > {log:q} 2>&1"
