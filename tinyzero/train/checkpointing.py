"""Checkpoints that survive a kill: written beside their final name and renamed into place,
checked before a resume, found again with `ckpt_path=last` (only a run's own: same settings), and
pruned to the newest few."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tinyzero.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)
STEP_FILE = re.compile(r"step_(\d+)\.ckpt$")
SHARDED_METADATA = "meta.pt"  # a sharded checkpoint's file of everything but weights and optimizer states
CONFIG_KEY = "tinyzero_config"  # where a checkpoint keeps the resolved config of the run that saved it
# Keys (with everything under them) that do not change what a run computes, so `ckpt_path=last`
# resumes across them: where files go, what is logged, printed or checkpointed, how often it
# evaluates (greedy: no randomness), and how long it goes on (prompts are a function of the step and
# the LR schedule has no end, so a finished run can be extended). Every other key must be equal.
RUN_INDEPENDENT_KEYS = (
    "run_name",
    "algorithm.name",  # a label for run_name; what it names is in the other algorithm keys
    "model.pretrain.task",  # a guard on task=, not a setting
    "ckpt_path",
    "gpu_memory_gib",
    "host_memory_gib",
    "sweep_job_process",
    "paths",
    "logger",
    "trainer.default_root_dir",
    "data.epochs",
    "data.max_steps",
    "callbacks.checkpoint",
    "callbacks.stop_on_signal",
    "callbacks.progress_bar",
    "callbacks.rollout.eval_every_n_steps",
    "callbacks.rollout.eval_max_new_tokens",
    "callbacks.rollout.print_samples_every_n_steps",
    "callbacks.rollout.num_samples_printed",
    "callbacks.rollout.dump_rollouts",
    "callbacks.rollout.dump_dir",
)
ABSENT = "<absent>"


class CorruptCheckpointError(ValueError):
    pass


def checkpoint_step(path: str | Path) -> int:
    match = STEP_FILE.search(str(path))
    if match is None:
        raise ConfigError(f"{path} is not named step_K.ckpt")
    return int(match.group(1))


def verify_checkpoint(path: str | Path) -> None:
    """Raise `CorruptCheckpointError` unless `path` is a whole checkpoint: a torch archive whose every
    member passes its CRC check, or a sharded one (a folder, `trainer=fsdp`) whose metadata reads and
    whose every shard file is there at least as long as the metadata says (shards carry no CRC)."""
    path = Path(path)
    if path.is_dir():
        return verify_sharded(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    verify_archive(path)


def verify_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({err}); resume from an earlier one, or use ckpt_path=last"
        ) from err
    if bad_member is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {bad_member} fails its CRC check")


def verify_sharded(path: Path) -> None:
    """A distributed checkpoint as Lightning's ModelParallelStrategy writes it: `meta.pt` (everything but
    the weights and optimizer states), torch's `.metadata` and the ranks' `__R_0.distcp` shard files."""
    from torch.distributed.checkpoint import FileSystemReader

    verify_archive(path / SHARDED_METADATA)
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # a missing or cut .metadata fails in many ways; each means "do not resume it"
        raise CorruptCheckpointError(f"checkpoint {path}: its .metadata does not read ({err})") from err
    ends: dict[str, int] = {}
    for item in metadata.storage_data.values():
        ends[item.relative_path] = max(ends.get(item.relative_path, 0), item.offset + item.length)
    for name, end in sorted(ends.items()):
        shard = path / name
        if not shard.is_file() or shard.stat().st_size < end:
            raise CorruptCheckpointError(f"checkpoint {path}: shard {name} is missing or shorter than {end} bytes")


def run_config(cfg: DictConfig) -> dict:
    """The resolved config that each checkpoint keeps, to be compared when a run resumes."""
    return OmegaConf.to_container(cfg, resolve=True)


def saved_config(path: str | Path) -> dict | None:
    """The config a checkpoint was saved with (None: saved without one). Memory-mapped: no tensor is read."""
    path = Path(path)
    try:
        checkpoint = torch.load(
            path / SHARDED_METADATA if path.is_dir() else path, map_location="cpu", mmap=True, weights_only=False
        )
    except Exception as err:  # a damaged archive fails in many ways; each means "do not resume it"
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt ({err})") from err
    return checkpoint.get(CONFIG_KEY)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes_the_run(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in RUN_INDEPENDENT_KEYS)


def config_differences(saved: dict | None, current: dict) -> list[str]:
    """`key: saved value -> current value` for every key that changes the run and differs."""
    if saved is None:
        return ["no config saved in it"]
    old, new = flatten(saved), flatten(current)
    keys = sorted(
        k
        for k in old.keys() | new.keys()
        if changes_the_run(k) and comparable(k, old.get(k, ABSENT)) != comparable(k, new.get(k, ABSENT))
    )
    return [f"{k}: {old.get(k, ABSENT)} -> {new.get(k, ABSENT)}" for k in keys]


def comparable(key: str, value: object) -> object:
    """A `_target_` as its class or function name: moving it to another module (a checkpoint saved
    before the package was laid out in layers names `tinyzero.callbacks.RLCheckpoint`) is no other setting."""
    if key.rsplit(".", 1)[-1] == "_target_" and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    return value


def newest_first(directories: list[str | Path]) -> list[Path]:
    candidates = {Path(os.path.abspath(p)) for d in directories for p in glob.glob(os.path.join(str(d), "step_*.ckpt"))}
    return sorted(candidates, key=lambda p: (checkpoint_step(p), p.stat().st_mtime), reverse=True)


def last_good_checkpoint(directories: list[str | Path], config: dict | None = None) -> Path | None:
    """The highest-step checkpoint under `directories` that verifies and, given `config`, was saved by a
    run with the same settings (`RUN_INDEPENDENT_KEYS` aside); the others are skipped, logged."""
    for path in newest_first(directories):
        try:
            # the config first: reading it is cheap, verifying reads the whole file
            differing = [] if config is None else config_differences(saved_config(path), config)
            if differing:
                log.info("skipping %s, saved with other settings: %s", path, "; ".join(differing))
                continue
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            log.warning("skipping %s", err)
            continue
        return path
    return None


def resume_path(ckpt_path: str | None, directories: list[str | Path], config: dict | None = None) -> str | None:
    """What `trainer.fit(ckpt_path=...)` gets: None, a verified path, or for `last` the newest good
    checkpoint saved with this run's `config` (None, logged, when there is none yet: a first launch)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = last_good_checkpoint(directories, config)
        log.info(
            "ckpt_path=last: %s",
            f"resuming from {found}" if found else "no checkpoint with this run's settings yet, starting fresh",
        )
        return None if found is None else str(found)
    verify_checkpoint(ckpt_path)
    differing = [] if config is None else config_differences(saved_config(ckpt_path), config)
    if differing:
        log.warning("resuming from %s, saved with other settings: %s", ckpt_path, "; ".join(differing))
    return ckpt_path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish(temporary: Path, final: Path) -> None:
    """Make a fully written file or directory visible under its final name in one rename."""
    for file in [temporary] if temporary.is_file() else temporary.rglob("*"):
        if file.is_file():
            fsync_file(file)
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(temporary, final)


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` `step_K.ckpt` files and `hf/step_K` folders."""
    removed = []
    checkpoints = sorted(directory.glob("step_*.ckpt"), key=checkpoint_step)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if path.is_dir():  # a sharded checkpoint
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    exports = sorted(
        (p for p in (directory / "hf").glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for path in exports[: max(0, len(exports) - keep_last)]:
        shutil.rmtree(path)
        removed.append(path)
    return removed


def discard_unused_run_dir(output_dir: str | Path, log_dir: str | Path) -> None:
    """Remove a run folder that holds only what Hydra writes before the script starts (`.hydra/`, the
    job's `.log`): a run that failed before it began is no run. The folders above it, up to and with
    `log_dir` (`outputs/`), go too when that leaves them empty."""
    output_dir, log_dir = Path(output_dir).absolute(), Path(log_dir).absolute()
    if not output_dir.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir)
    for folder in output_dir.parents:
        if log_dir not in (folder, *folder.parents) or any(folder.iterdir()):
            break
        folder.rmdir()
