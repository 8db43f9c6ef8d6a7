"""Checkpoints that survive a kill: written beside their final name and renamed into place,
checked before a resume, found again with `ckpt_path=last`, and pruned to the newest few."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)
STEP_FILE = re.compile(r"step_(\d+)\.ckpt$")


class CorruptCheckpointError(ValueError):
    pass


def checkpoint_step(path: str | Path) -> int:
    match = STEP_FILE.search(str(path))
    if match is None:
        raise ValueError(f"{path} is not named step_K.ckpt")
    return int(match.group(1))


def verify_checkpoint(path: str | Path) -> None:
    """Raise `CorruptCheckpointError` unless `path` is a whole torch checkpoint (a zip archive
    whose every member passes its CRC check)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({err}); resume from an earlier one, or use ckpt_path=last"
        ) from err
    if bad_member is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {bad_member} fails its CRC check")


def last_good_checkpoint(directories: list[str | Path]) -> Path | None:
    """The highest-step checkpoint under `directories` that verifies; corrupt ones are skipped, logged."""
    candidates = {Path(p) for d in directories for p in glob.glob(os.path.join(str(d), "step_*.ckpt"))}
    for path in sorted(candidates, key=lambda p: (checkpoint_step(p), p.stat().st_mtime), reverse=True):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            log.warning("skipping %s", err)
            continue
        return path
    return None


def resume_path(ckpt_path: str | None, directories: list[str | Path]) -> str | None:
    """What `trainer.fit(ckpt_path=...)` gets: None, a verified path, or for `last` the newest good
    checkpoint of this run name (None, logged, when there is none yet: a first launch)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = last_good_checkpoint(directories)
        log.info("ckpt_path=last: %s", f"resuming from {found}" if found else "no checkpoint yet, starting fresh")
        return None if found is None else str(found)
    verify_checkpoint(ckpt_path)
    return ckpt_path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish(temporary: Path, final: Path) -> None:
    """Make a fully written file or directory visible under its final name in one rename."""
    if temporary.is_file():
        fsync_file(temporary)
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(temporary, final)


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` `step_K.ckpt` files and `hf/step_K` folders."""
    removed = []
    checkpoints = sorted(directory.glob("step_*.ckpt"), key=checkpoint_step)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        path.unlink()
        removed.append(path)
    exports = sorted(
        (p for p in (directory / "hf").glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for path in exports[: max(0, len(exports) - keep_last)]:
        shutil.rmtree(path)
        removed.append(path)
    return removed
