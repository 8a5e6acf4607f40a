# Tables from every finished run, figures from the tables; both run on the submit host.


localrules:
    tables,
    figures,
    best_temperature,
    best_point,
    rung_decision,


rule tables:
    input:
        **STUDY_OUTPUTS,
    output:
        **{
            name.replace(".", "_"): report(
                f"{RESULTS}/tables/{name}",
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
        results=lambda wildcards, output: study_folder(output.runs_csv),
        # the study as configured now, less what no result depends on: the tables hold what it asks for
        # (kdsweep.tables.study_scope), and a change of it, not of the device, rebuilds them
        study=COMMANDS.study_meaning(),
    shell:
        # a search other than the default (the grid) is named (kdsweep.tables.search)
        "kdsweep aggregate {params.results:q}"
        + ("" if PLAN.search.default else f" --search {PLAN.search.name}")
        + " {params.study} >> {log:q} 2>&1"


rule figures:
    input:
        LAYOUT.tables(),
    output:
        png=[
            report(
                path,
                caption=f"../report/figure_{kind}.rst",
                category="Figures",
                subcategory=student or "all students",
                labels={"figure": name.replace("_", " "), "student": student or "all"},
            )
            for path, kind, student, name in LAYOUT.figures(["png"])
        ],
        pdf=[path for path, *_ in LAYOUT.figures(["pdf"])],
    log:
        f"{LOGS}/figures.log",
    conda:
        CONDA_ENV
    params:
        results=lambda wildcards, output: study_folder(output.png[0]),
        soft_weight=number(PLAN.staged_weight),
        students=PLAN.students,
        methods=COMMANDS.methods_option(),
    shell:
        "kdsweep plots {params.results:q} --soft-weight {params.soft_weight}"
        " --students {params.students}{params.methods} >> {log:q} 2>&1"
