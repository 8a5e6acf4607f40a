# What every job starts from: the dataset (torchvision's files, downloaded on the submit host),
# the split's statistics, and the runtime section (results/<study>/runtime.yaml).


# results/<study>/runtime.yaml: what every job reads but no result depends on (commands.MACHINE_LOCAL:
# the runtime section and where the data lies). Rewritten whenever it changes (params); every job
# takes it as an ancient() input, so that rewriting it reruns nothing: moving the data retrains
# nothing.
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
        machine_local=COMMANDS.machine_local(),
    shell:
        "kdsweep config --section runtime --section dataset.root --out {output:q} {params.machine_local}"
        " >> {log:q} 2>&1"


# The whole config the workflow runs with, rewritten whenever it changes: what
# `python -m kdsweep status results/<study>` reads. No job reads it (rule all asks for it).
rule study:
    output:
        LAYOUT.study_record(),
    log:
        f"{LOGS}/study.log",
    conda:
        CONDA_ENV
    params:
        config=COMMANDS.study_config(),
    shell:
        "kdsweep config --out {output:q} {params.config} >> {log:q} 2>&1"


if DATASET_DIR:

    # on the submit host: compute nodes often have no internet access. Its output is a record under
    # results/<study>/, not the data folder: stats reads it as ancient(), so that a moved data folder
    # (a new dataset.root: this rule runs again, and finds the files there) reruns nothing.
    localrules:
        download,

    rule download:
        output:
            DATASET_RECORD,
        log:
            f"{LOGS}/download.log",
        conda:
            CONDA_ENV
        params:
            dataset=COMMANDS.dataset_location(),
        shell:
            "kdsweep download {params.dataset} --record {output:q} >> {log:q} 2>&1"


# The split's statistics and the digest of the data (kdsweep.split): every run's identity holds it, and
# every job that reads the data checks it, so files that changed under the same path are refused.
# An imagefolder dataset's stats job also decodes its validation and test images, once, into two
# arrays beside stats.json (every epoch's validation and every attack read them), and reads every file
# of the tree: on a cluster give it CPUs and time (profiles/default: KDSWEEP_SLURM_STATS_*).
if IMAGEFOLDER:

    rule stats:
        input:
            runtime=ancient(RUNTIME),
        output:
            stats=STATS,
            arrays=STATS_ARRAYS,
        log:
            f"{LOGS}/stats.log",
        conda:
            CONDA_ENV
        threads: THREADS
        params:
            config=COMMANDS.job_config("stats"),
        shell:
            "kdsweep stats --out {output.stats:q} --config {input.runtime:q} {params.config}"
            " runtime.threads={threads} >> {log:q} 2>&1"

else:

    rule stats:
        input:
            [ancient(DATASET_RECORD)] if DATASET_DIR else [],
            runtime=ancient(RUNTIME),
        output:
            STATS,
        log:
            f"{LOGS}/stats.log",
        conda:
            CONDA_ENV
        params:
            config=COMMANDS.job_config("stats"),
        shell:
            "kdsweep stats --out {output:q} --config {input.runtime:q} {params.config} >> {log:q} 2>&1"
