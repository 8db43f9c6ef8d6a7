"""A run's `metrics.csv`: one row per RL step, whole after a kill, and kept across resumes."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.csv"


class RunLog(Logger):
    """Writes `save_dir/metrics.csv`: one row per RL step, every metric logged at that step in it.
    Step k is the state after k RL updates: training row k holds the k-th update's metrics, held-out
    row 0 the evaluation before training, row k the one after update k. Columns: `step`, then the
    union of the metrics' names, sorted.

    The file is rewritten whole, under a temporary name renamed into place, once a step is complete
    (a later step is logged) and on `save()`: `RLCheckpoint` calls it before it publishes a checkpoint,
    so every row up to a checkpoint's step is on disk before the checkpoint, and a kill leaves a whole
    file. `resume` carries on the history of a resumed run; a run that starts fresh replaces the file.
    """

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self.path = Path(save_dir) / METRICS_FILE
        self.rows: dict[int, dict[str, str]] = {}  # {step: {metric: value as written}}
        self._lines: dict[int, str] = {}  # each row rendered for the current columns: a rewrite renders only new rows
        self._columns: list[str] = []
        self._step: int | None = None  # the step being logged: complete once a later one arrives
        self._changed = False  # rows differ from the file
        self._resumed = False
        self._written = False

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing to do: Hydra keeps the run's whole config in `.hydra/config.yaml`."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float | torch.Tensor], step: int | None = None) -> None:
        if step is None:
            raise ValueError("RunLog keeps one row per RL step: log with step=module.rl_step")
        if self._step is not None and step != self._step:
            self._write(durable=False)
        self._step = step
        row = self.rows.setdefault(int(step), {})
        for key, value in metrics.items():
            text = str(value.item() if isinstance(value, torch.Tensor) else value)
            if row.get(key) != text:
                row[key] = text
                self._lines.pop(int(step), None)
                self._changed = True

    @rank_zero_only
    def resume(self, history: Path, step: int) -> None:
        """Carry on from `step`, the resumed checkpoint's: keep the rows up to it from `history` (the
        metrics.csv of the run that saved the checkpoint: this folder's, or an earlier run's), drop those
        after it (logged after that checkpoint, before the run stopped; this run logs them again)."""
        earlier = read_rows(history) if history.is_file() else {}
        kept = {s: row for s, row in earlier.items() if s <= step}
        if not history.is_file():
            log.warning("no %s beside the resumed checkpoint: %s starts at step %d", history, self.path, step + 1)
        elif len(kept) < len(earlier):
            log.info("%s: rows up to step %d kept, %d later ones dropped", history, step, len(earlier) - len(kept))
        self.rows = {**kept, **self.rows}
        self._lines.clear()
        self._changed = self.rows != (read_rows(self.path) if self.path.is_file() else {})
        self._resumed = True

    @rank_zero_only
    def save(self) -> None:
        self._write(durable=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._write(durable=True)

    def _write(self, durable: bool) -> None:
        """Rewrite the file if a row changed; `durable`: on the disk itself, not only the page cache."""
        if not self._changed:
            return
        if not self._resumed and not self._written and self.path.is_file():
            log.warning("replacing %s: this run starts fresh (no checkpoint resumed)", self.path)
        columns = ["step", *sorted({key for row in self.rows.values() for key in row})]
        if columns != self._columns:
            self._columns, self._lines = columns, {}
        for step in self.rows.keys() - self._lines.keys():
            self._lines[step] = csv_line([step, *(self.rows[step].get(key, "") for key in columns[1:])])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", newline="") as f:
            f.write(csv_line(columns) + "".join(self._lines[step] for step in sorted(self._lines)))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, self.path)
        self._changed, self._written = False, True


def csv_line(values: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def read_rows(path: Path) -> dict[int, dict[str, str]]:
    """{step: {metric: value}} of a metrics.csv, empty cells left out. A file written by Lightning's
    CSVLogger (before RunLog) has several rows per step, and its training rows' `step` is Lightning's
    0-based global step: their RL step is `train/rl_step`."""
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {key: value for key, value in row.items() if value not in ("", None)}
            step = values.pop("step")
            step = values.pop("train/rl_step", step)
            values.pop("epoch", None)
            rows.setdefault(int(float(step)), {}).update(values)
    return rows
