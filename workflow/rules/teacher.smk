# The one teacher every student distils from (teacher.model, teacher.seed).
# checkpoint.pt is no output: it survives a failed attempt and the retry resumes from it.


rule teacher:
    input:
        stats=STATS,
    output:
        metrics=f"{RESULTS}/runs/teacher/{{model}}_seed{{seed}}/metrics.json",
        history=f"{RESULTS}/runs/teacher/{{model}}_seed{{seed}}/history.csv",
        model=f"{RESULTS}/runs/teacher/{{model}}_seed{{seed}}/model.pt",
    log:
        f"{LOGS}/runs/teacher/{{model}}_seed{{seed}}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        kdsweep=kdsweep,
        defaults=defaults,
        run=lambda wildcards, output: os.path.dirname(output.metrics),
        config=TRAIN_CONFIG,
    shell:
        "{params.kdsweep} train --role teacher --model {wildcards.model} --seed {wildcards.seed}"
        " --stats {input.stats:q} --out {params.run:q}"
        " --config {params.defaults} {params.config} runtime.threads={threads}"
        " > {log:q} 2>&1"
