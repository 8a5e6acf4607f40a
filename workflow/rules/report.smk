# Tables from every finished run, figures from the tables; both run on the submit host.


localrules:
    tables,
    figures,
    best_temperature,


rule tables:
    input:
        **STUDY_OUTPUTS,
    output:
        **{
            name.replace(".", "_"): report(
                table(name),
                caption=f"../report/table_{name.split('.')[0]}.rst",
                category="Tables",
                labels={"table": name.split(".")[0], "format": name.split(".")[1]},
            )
            for name in TABLES
        },
    log:
        f"{LOGS}/tables.log",
    conda:
        CONDA_ENV
    params:
        kdsweep=kdsweep,
        results=lambda wildcards, output: study_folder(output.runs_csv),
    shell:
        "{params.kdsweep} aggregate {params.results:q} > {log:q} 2>&1"


rule figures:
    input:
        [table(name) for name in TABLES],
    output:
        png=[
            report(
                figure(kind, student, "png"),
                caption=f"../report/figure_{kind}.rst",
                category="Figures",
                subcategory=student or "all students",
                labels={"figure": kind.replace("_", " "), "student": student or "all"},
            )
            for kind, student in FIGURES
        ],
        pdf=[figure(kind, student, "pdf") for kind, student in FIGURES],
    log:
        f"{LOGS}/figures.log",
    conda:
        CONDA_ENV
    params:
        kdsweep=kdsweep,
        results=lambda wildcards, output: study_folder(output.png[0]),
        soft_weight=json.dumps(STAGED_W),
    shell:
        "{params.kdsweep} plots {params.results:q} --soft-weight {params.soft_weight}"
        " > {log:q} 2>&1"
