"""kdsweep: knowledge-distillation hyperparameter studies, one job at a time."""

__version__ = "0.1.0"
