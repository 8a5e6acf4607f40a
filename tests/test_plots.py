"""Figures of a fake study: every declared file is written, as a real PNG and PDF, whatever has finished."""

import pytest

from kdsweep import plots
from kdsweep.tables import write_tables
from test_tables import BASE, make_study

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}
STAGED_WEIGHT = 0.9  # the fake study's temperature-sweep weight (it has runs at 0.5, 0.9 and 1)


def assert_figures(root, students, paths):
    names = plots.figure_names(students)
    assert sorted(p.name for p in paths) == sorted(names)
    for name in names:
        path = root / "figures" / name
        data = path.read_bytes()
        assert data.startswith(MAGIC[path.suffix]) and len(data) > 1000, name
    assert not [p for p in (root / "figures").iterdir() if p.name.startswith(".")], "temp files left"


def test_figure_names():
    names = plots.figure_names(["resnet18"])
    assert names == ["temperature.png", "temperature.pdf", "fidelity.png", "fidelity.pdf", "pairs.png", "pairs.pdf",
                     "soft_weight_resnet18.png", "soft_weight_resnet18.pdf", "grid_resnet18.png", "grid_resnet18.pdf",
                     "robustness_resnet18.png", "robustness_resnet18.pdf", "per_class_resnet18.png",
                     "per_class_resnet18.pdf"]
    assert len(plots.figure_names(["a", "b"])) == 3 * 2 + 2 * 4 * 2


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)], ids=["1seed", "3seeds"])
def test_every_declared_figure_is_written(tmp_path, seeds):
    make_study(tmp_path, seeds)
    paths = plots.write_figures(tmp_path, STAGED_WEIGHT)  # no tables yet: writes them first
    assert (tmp_path / "tables" / "grid.csv").is_file()
    assert_figures(tmp_path, sorted(BASE), paths)


def test_missing_data_still_gives_every_figure(tmp_path):
    """No run at the temperature-plot weight, and a declared student without any finished run."""
    make_study(tmp_path)
    write_tables(tmp_path)
    students = ["resnet18", "mobilenet_v3_large"]
    paths = plots.write_figures(tmp_path, 0.3, students=students)
    assert_figures(tmp_path, students, paths)


def test_figures_before_any_evaluation_or_pgd_result(tmp_path):
    """A sweep in progress: FGSM results only, no evaluation file yet (fidelity: a note; robustness: FGSM)."""
    import shutil

    make_study(tmp_path)
    shutil.rmtree(tmp_path / "evaluation")
    for path in tmp_path.glob("attacks/*/*/pgd_eps*.json"):
        path.unlink()
    paths = plots.write_figures(tmp_path, STAGED_WEIGHT)
    assert_figures(tmp_path, sorted(BASE), paths)
