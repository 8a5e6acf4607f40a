"""Run names: a folder's name encodes the run's coordinates (student, T, w, seed)."""


def fmt(value) -> str:
    """A number as it appears in names: 4.0 -> '4', 0.9 -> '0.9', 0.01 -> '0.01'."""
    return f"{float(value):g}"


def run_name(role: str, model: str, seed: int, temperature=None, soft_weight=None) -> str:
    if role == "kd":
        return f"{model}_T{fmt(temperature)}_soft{fmt(soft_weight)}_seed{seed}"
    return f"{model}_seed{seed}"


def run_path(role: str, model: str, seed: int, temperature=None, soft_weight=None) -> str:
    """Path of a run folder relative to results/<study>/."""
    return f"runs/{role}/{run_name(role, model, seed, temperature, soft_weight)}"


def attack_file(attack: str, epsilon) -> str:
    return f"{attack}_eps{fmt(epsilon)}.json"
