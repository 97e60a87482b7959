"""The paper's experiments as named, resumable runs (``perturbsets experiments``).

Each experiment is a YAML file in ``perturbsets/configs/paper/``:

* ``description``, ``table`` and ``row``: which row of which paper table it reproduces;
* ``requires``: another experiment whose perturbation set it uses (run first);
* ``perturbation_set``: a :class:`~perturbsets.config.Config` (learn, pick ε, evaluate);
* ``robust``: a :class:`~perturbsets.config.RobustConfig` (robust training + evaluation);
* ``smoke``: overrides, merged into both, that shrink the run to seconds on tiny data.

Strings may use ``{data}`` (the ``--data`` folder) and ``{runs}`` (the ``--out`` folder).
``--data embedded`` runs the MNIST experiments on the 5,000 real MNIST digits embedded in a
registry package (source ``mnist5k``, :mod:`perturbsets.embedded`): every MNIST data section
reads them instead, with the split adapted to 4,000 / 500 (and the fixed 500 test digits);
the rest of the paper's config is unchanged.
A run writes into ``<out>/<name>/`` and skips every stage already complete, resuming a
stage whose checkpoints exist, so an interrupted ``experiments run`` picks up where it
stopped.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from perturbsets._util.io import write_text
from perturbsets._util.locking import folder_lock
from perturbsets._util.registry import unknown_name_message
from perturbsets.config.io import ConfigError, from_dict
from perturbsets.config.learn import Config
from perturbsets.config.robust import RobustConfig
from perturbsets.reports.tables import paper_table
from perturbsets.training.distributed import synchronize
from perturbsets.training.loop import LATEST, run_folder
from perturbsets.workflows.learn import SET_DIR, learn_perturbation_set
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

EMBEDDED = "embedded"
EMBEDDED_SPLIT = {"train": 4000, "val": 500}
KEYS = ("description", "table", "row", "requires", "perturbation_set", "robust", "smoke")


@dataclass
class Experiment:
    """One experiment file, its configs resolved."""

    name: str
    description: str
    table: str
    row: str
    requires: str | None
    perturbation_set: Config | None
    robust: RobustConfig | None


def _experiment_files() -> dict[str, Any]:
    folder = resources.files("perturbsets") / "configs" / "paper"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def experiment_names() -> list[str]:
    return sorted(_experiment_files())


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return copy.deepcopy(override)


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names) if "{" in value else value
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _to_embedded(value: Any) -> tuple[Any, int]:
    """``value`` with every MNIST data section reading the embedded digits, and how many it changed."""
    if isinstance(value, list):
        items = [_to_embedded(v) for v in value]
        return [v for v, _ in items], sum(c for _, c in items)
    if not isinstance(value, dict):
        return value, 0
    if value.get("source") == "mnist":
        rest = {k: v for k, v in value.items() if k not in ("path", "check_size")}
        return {**rest, "source": "mnist5k", "split": dict(EMBEDDED_SPLIT)}, 1
    items = {k: _to_embedded(v) for k, v in value.items()}
    return {k: v for k, (v, _) in items.items()}, sum(c for _, c in items.values())


def _read(name: str) -> dict[str, Any]:
    files = _experiment_files()
    if name not in files:
        raise ValueError(unknown_name_message("experiment", name, files))
    raw = yaml.safe_load(files[name].read_text(encoding="utf-8")) or {}
    unknown = set(raw) - set(KEYS)
    if unknown:
        raise ConfigError(f"experiment {name}: unknown keys {sorted(unknown)}; valid: {', '.join(KEYS)}")
    return raw


def embedded_experiments() -> list[str]:
    """The experiments ``--data embedded`` serves: those that read MNIST."""
    return [n for n in experiment_names() if _to_embedded({k: _read(n).get(k) for k in ("perturbation_set", "robust")})[1]]


def load_experiment(name: str, *, data: str | Path = "data", runs: str | Path = "runs", smoke: bool = False) -> Experiment:
    """Read experiment ``name``; ``smoke`` applies its smoke overrides.

    ``data="embedded"`` reads the embedded MNIST digits in place of MNIST (see the module
    docstring); an experiment that reads no MNIST is then refused.
    """
    raw = _read(name)
    if str(data) == EMBEDDED:
        converted, changed = _to_embedded({k: raw.get(k) for k in ("perturbation_set", "robust")})
        if not changed:
            raise ValueError(
                f"--data {EMBEDDED} holds only MNIST digits, and experiment {name!r} reads none; it serves "
                f"{', '.join(embedded_experiments())}. Give --data the folder holding this experiment's dataset"
            )
        raw = {**raw, **converted}
    names = {"data": str(Path(data).expanduser()), "runs": str(Path(runs).expanduser())}
    sections = {}
    for key, cls in (("perturbation_set", Config), ("robust", RobustConfig)):
        section = raw.get(key)
        if section is not None and smoke and raw.get("smoke", {}).get(key):
            section = _merge(section, raw["smoke"][key])
        sections[key] = None if section is None else from_dict(cls, _substitute(section, names))
    return Experiment(
        name, raw.get("description", ""), raw.get("table", ""), raw.get("row", name), raw.get("requires"),
        sections["perturbation_set"], sections["robust"],
    )


def _set_done(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / SET_DIR / "perturbation_set.json").is_file()


def run_experiment(
    name: str, data: str | Path, out: str | Path, *, smoke: bool = False, progress: bool = True, _chain: tuple = ()
) -> Path:
    """Run experiment ``name`` (and what it requires) into ``out/name``; complete stages are skipped."""
    if name in _chain:
        raise ValueError(f"experiments require each other in a cycle: {' -> '.join((*_chain, name))}")
    out = Path(out)
    exp = load_experiment(name, data=data, runs=out, smoke=smoke)
    if exp.requires:
        run_experiment(exp.requires, data, out, smoke=smoke, progress=progress, _chain=(*_chain, name))
    run = out / name
    # Locked before the checks below, so another process cannot finish a stage between them.
    with run_folder(run):
        if exp.perturbation_set is not None and not _set_done(run):
            resume = (run / "checkpoints" / LATEST).is_file()
            learn_perturbation_set(exp.perturbation_set, run, resume=resume, progress=progress)
        synchronize()  # under torchrun the robust stage reads the set rank 0 has just saved
        if exp.robust is not None:
            robust_dir = run / "robust"
            if not (robust_dir / "eval" / "robust_metrics.json").is_file():
                resume = (robust_dir / "checkpoints" / LATEST).is_file()
                result = run_robust_training(exp.robust, robust_dir, resume=resume, progress=progress)
                # Under torchrun every rank evaluates its share of the batches; rank 0 writes.
                run_robust_evaluation(
                    exp.robust, robust_dir, robust_dir / "eval", model=result.model, name=exp.row, progress=progress
                )
    return run


def write_paper_table(table: str, out: str | Path, *, data: str | Path = "data") -> str:
    """The rows of ``table`` (e.g. ``"Table 4"``) from every finished experiment under ``out``, also saved as ``out/table_4.md``."""
    out = Path(out)
    # Tables 8 and 11 hold the validation latent-norm statistics of the Table 7 and Table 10 sets.
    norms_of = {"Table 8": "Table 7", "Table 11": "Table 10"}
    norms_only = table in norms_of
    names = embedded_experiments() if str(data) == EMBEDDED else experiment_names()
    exps = [load_experiment(n, data=data, runs=out) for n in names]
    exps = [e for e in exps if e.table == norms_of.get(table, table)]
    if not exps:
        tables = sorted({load_experiment(n).table for n in experiment_names()} | set(norms_of))
        raise ValueError(unknown_name_message("table", table, tables))
    # Read the finished runs and write the table as one step, under the runs folder's lock: two
    # experiments finishing together could otherwise each write a table missing the other's row.
    with folder_lock(out, what="runs folder"):
        return _collect_and_write(table, exps, out, norms_only)


def _collect_and_write(table: str, exps: list[Experiment], out: Path, norms_only: bool) -> str:
    robust_records, quality_rows, norm_rows = [], [], []
    for exp in exps:
        if exp.robust is not None:
            path = out / exp.name / "robust" / "eval" / "robust_metrics.json"
            if path.is_file():
                robust_records.append(json.loads(path.read_text()))
        elif (out / exp.name / "metrics.json").is_file():
            metrics = json.loads((out / exp.name / "metrics.json").read_text())
            if norms_only:
                beta = exp.perturbation_set.training.beta(float("inf")) if exp.perturbation_set else float("nan")
                norm_rows.append((exp.row, beta, metrics))
            else:
                quality_rows.append((exp.row, metrics))
    text = paper_table(table, quality_rows=quality_rows, norm_rows=norm_rows, robust_records=robust_records)
    write_text(out / f"{table.replace(' ', '_').lower()}.md", text)
    return text


def list_experiments() -> None:
    """Print every experiment with its table, row and the experiment whose set it uses."""
    for name in experiment_names():
        exp = load_experiment(name)
        needs = f" (uses {exp.requires})" if exp.requires else ""
        print(f"{name:<30} {exp.table:<8} {exp.row}{needs}")


def run_experiments(name: str, data: str | Path, out: str | Path, *, smoke: bool, progress: bool) -> int:
    """Run experiment ``name`` (or ``all`` that ``data`` serves) and print the tables they fill; the exit status.

    ``all`` skips the experiments whose data is missing from ``data`` (status 1 then).
    """
    names = [name]
    if name == "all":
        names = embedded_experiments() if str(data) == EMBEDDED else experiment_names()
    missing = []
    for each in names:
        try:
            run = run_experiment(each, data, out, smoke=smoke, progress=progress)
        except FileNotFoundError as err:
            if name != "all":
                raise
            # "all" runs what the --data folder allows (e.g. MNIST and CIFAR without Multi-Illumination).
            missing.append(each)
            print(f"{each}: skipped, its data is missing: {err}", file=sys.stderr)
            continue
        print(f"{each}: done, results in {run}")
    for table in sorted({load_experiment(n).table for n in names if n not in missing}):
        print(write_paper_table(table, out, data=data))
    if missing:
        print(f"{len(missing)} experiment(s) skipped for missing data: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
