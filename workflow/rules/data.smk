# The dataset: torchvision's files (downloaded on the submit host) and the split's statistics.


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
            kdsweep=kdsweep,
            defaults=defaults,
            config=DATA_CONFIG,
        shell:
            "{params.kdsweep} download --config {params.defaults} {params.config} > {log:q} 2>&1"


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
        kdsweep=kdsweep,
        defaults=defaults,
        config=DATA_CONFIG,
    shell:
        "{params.kdsweep} stats --out {output:q} --config {params.defaults} {params.config}"
        " > {log:q} 2>&1"
