"""A study folder's files as the tables find them: each kind under the name the workflow gives it
(kdsweep.layout), so that nothing else is ever read or tabled.

Whatever else lies under the study's folders `runs/`, `attacks/`, `masking/`, `evaluation/`, `halving/`,
`confirm/`, `packs/` and `trained/` -- a `.bak` copy of a run folder, a "(copy)" file, notes, an empty folder of no
run, a link that loops -- is a stray: never read, never tabled, and said in one warning line per command
(`warn_strays`); nothing is moved or deleted. A run folder is the study's when its name is a run's and its
metrics.json describes that run (a copy of a run under another name is a stray too). Hidden entries (a
killed write's temporary file, a run folder's lock) are the jobs' own and pass unsaid. A file with the
study's name that cannot be read is no stray but damaged: its reader says so in one sentence.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

from kdsweep.methods import METHODS
from kdsweep.plan import PACK_RECORD, ROLES

# The folders whose entries the workflow names (what aggregate reads, and what it checks for strays).
STUDY_FOLDERS = ("runs", "attacks", "masking", "evaluation", "halving", "confirm", "packs", "trained")
_RUN = r"[A-Za-z0-9][\w.+-]*_seed\d+"  # a run's folder name (kdsweep.plan.Run.name)
RUN = re.compile(_RUN)
ATTACK = re.compile(r"(?P<attack>[a-z][a-z0-9_]*)_eps(?P<eps>[0-9][0-9.e+-]*)\.json")  # layout.ATTACK_FILE
PACK = PACK_RECORD  # plan.Plan._chunks
TRAINED = ("teacher", "baseline", "confirm")  # the roles rule train writes records of


@cache
def _students() -> str:
    """The architectures a student can be (kdsweep.models' registry), as a regular expression."""
    from kdsweep.models import names

    return "|".join(map(re.escape, sorted(names(), key=len, reverse=True)))


def decision_name(name: str):
    """(student, rung) of a rung decision's file name, <student>_rung<epochs>.json; None for another name."""
    match = re.fullmatch(rf"(?P<student>{_students()})_rung(?P<rung>[1-9]\d*)\.json", name)
    return (match["student"], int(match["rung"])) if match else None


def choice_name(name: str):
    """(student, method) of a best-point record's file name, <student>.json (kd) or <student>_<method>.json;
    None for another name."""
    methods = "|".join(map(re.escape, METHODS))
    match = re.fullmatch(rf"(?P<student>{_students()})(?:_(?P<method>{methods}))?\.json", name)
    return (match["student"], match["method"] or "kd") if match else None


def _run_record(name: str) -> bool:
    """<run>.json: an evaluation's or a train record's name."""
    return name.endswith(".json") and RUN.fullmatch(name.removesuffix(".json")) is not None


def _entries(folder: Path) -> list[Path]:
    """The entries of a folder but its hidden ones, in order; none where it is no readable folder."""
    try:
        return sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    except OSError:
        return []


class StudyFiles:
    """The entries of a study folder's STUDY_FOLDERS that have the workflow's names, by kind, and the strays.

    runs      {"runs/<role>/<run>": folder} of run folders that hold a metrics.json (finished; their
              records are checked against their names by their reader, kdsweep.tables.collect)
    attacks   attack result files, attacks/<role>/<run>/<attack>_eps<eps>.json
    masking   the attack jobs' masking records, masking/<role>/<run>.json
    decisions halving/<student>_rung<epochs>.json
    choices   confirm/<student>[_<method>].json
    strays    everything else (relative paths), and what a reader finds to be no run of its name (`stray`)
    """

    def __init__(self, results_dir):
        self.root = Path(results_dir)
        self.runs: dict[str, Path] = {}
        self.attacks: list[Path] = []
        self.masking: list[Path] = []
        self.decisions: list[Path] = []
        self.choices: list[Path] = []
        self.strays: list[str] = []
        for role in self._folders("runs", ROLES):
            for run in _entries(role):
                if not (RUN.fullmatch(run.name) and run.is_dir()):
                    self.stray(run)
                elif (run / "metrics.json").is_file():
                    self.runs[run.relative_to(self.root).as_posix()] = run
        for role in self._folders("attacks", ROLES):
            for run in _entries(role):
                if not (RUN.fullmatch(run.name) and run.is_dir()):
                    self.stray(run)
                    continue
                self.attacks += self._files(run, lambda name: ATTACK.fullmatch(name))
        for role in self._folders("masking", ROLES):
            self.masking += self._files(role, _run_record)
        for role in self._folders("evaluation", ROLES):
            self._files(role, _run_record)
        self.decisions = self._files(self.root / "halving", decision_name)
        self.choices = self._files(self.root / "confirm", choice_name)
        self._files(self.root / "packs", lambda name: PACK.fullmatch(name))
        for role in self._folders("trained", TRAINED):
            self._files(role, _run_record)

    def _folders(self, name: str, roles) -> list[Path]:
        """The role folders of a study folder (its entries of another name are strays)."""
        found = []
        for path in _entries(self.root / name):
            if path.name in roles and path.is_dir():
                found.append(path)
            else:
                self.stray(path)
        return found

    def _files(self, folder: Path, named) -> list[Path]:
        """The files of a folder whose names `named` accepts (its other entries are strays)."""
        found = []
        for path in _entries(folder):
            if named(path.name) and path.is_file():
                found.append(path)
            else:
                self.stray(path)
        return found

    def stray(self, path):
        """Count `path` as a stray (never read again)."""
        name = Path(path).relative_to(self.root).as_posix()
        if name not in self.strays:
            self.strays.append(name)

    def warn(self):
        """The strays, in one warning line on stderr (nothing where there are none)."""
        if self.strays:
            shown = ", ".join(self.strays[:3]) + (", ..." if len(self.strays) > 3 else "")
            print(f"kdsweep: warning: ignored {len(self.strays)} file(s) or folder(s) under {self.root} that are no "
                  f"run or record of the study ({shown}); nothing reads them: move them out of the study's "
                  "folders to silence this", file=sys.stderr)
