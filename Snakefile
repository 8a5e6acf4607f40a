# kdsweep: knowledge-distillation hyperparameter studies (docs/internals.md).
#
#   snakemake --profile profiles/demo                     the offline CPU demo (studies/demo.yaml)
#   snakemake --profile profiles/slurm --configfile studies/<name>.yaml
#   snakemake --report results/<study>/report.html        every figure and table, captioned
#
# config.yaml holds every default; study files override it (--configfile), and
# the schema in workflow/schemas/ rejects unknown keys and bad values first.

from snakemake.utils import min_version

min_version("9.22")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


# Every table and figure, and every run they summarise: asking for the runs here
# (not only through the tables) makes a run added to a finished study, or a
# staged checkpoint still to be resolved, a job even when the tables exist.
rule all:
    default_target: True
    input:
        LAYOUT.tables(),
        [path for path, *_ in LAYOUT.figures()],
        LAYOUT.study_record(),
        **STUDY_OUTPUTS,
