"""Runs that die, stop, diverge or read bad input: resume exactly, keep their checkpoints, and fail clearly."""

import hashlib
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUICK, ROOT
from run_helpers import fit, read_metrics, step_rows

from tinyzero.ppo.losses import policy_loss
from tinyzero.tasks import CountdownTask
from tinyzero.train.build import build, resume_from
from tinyzero.train.checkpointing import (
    CONFIG_KEY,
    CorruptCheckpointError,
    checkpoint_step,
    config_differences,
    last_good_checkpoint,
    prune,
    resume_path,
    run_config,
    verify_checkpoint,
)
from tinyzero.train.run_log import METRICS_FILE, RunLog, read_rows


def assert_same_metrics(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], steps) -> None:
    for step in steps:
        assert got[step].keys() == want[step].keys(), step
        for key, value in want[step].items():
            assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)


def test_resumed_run_logs_the_uninterrupted_runs_metrics_after_the_earlier_rows(make_cfg, tmp_path):
    """Resumed into a new folder from step 2 of a 3-step run: metrics.csv starts with that run's rows
    0..2 as they were, then steps 3..5 log what a run that never stopped logs."""
    common = ["callbacks.checkpoint.save_hf=false", "callbacks.checkpoint.every_n_steps=1", "algorithm.actor_lr=1e-3"]
    whole = make_cfg("data.max_steps=5", *common, f"paths.output_dir={tmp_path}/whole")
    L.seed_everything(whole.seed)
    fit(whole)
    # evaluated at steps 0, 2 and 3 (the last), where the resumed run evaluates never
    evaluated = "callbacks.rollout.eval_every_n_steps=2"
    first = make_cfg("data.max_steps=3", *common, evaluated, f"paths.output_dir={tmp_path}/first")
    L.seed_everything(first.seed)
    fit(first)
    L.seed_everything(123)  # the resumed run must not depend on the process's RNG state
    resumed = make_cfg(
        "data.max_steps=5",
        *common,
        f"ckpt_path={tmp_path}/first/checkpoints/step_2.ckpt",
        f"paths.output_dir={tmp_path}/resumed",
    )
    fit(resumed)
    earlier, got = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "resumed")
    assert [row["step"] for row in got] == ["0", "1", "2", "3", "4", "5"]
    for mine, theirs in zip(got[:3], earlier[:3]):  # copied, timings included
        assert {k: v for k, v in mine.items() if v} == {k: v for k, v in theirs.items() if v}
    assert got[3]["val/accuracy"] == "" and earlier[3]["val/accuracy"] != ""  # the earlier step 3 is not kept
    assert_same_metrics(step_rows(tmp_path / "resumed"), step_rows(tmp_path / "whole"), [3, 4, 5])


def test_run_log_keeps_one_row_per_step_and_resumes_without_a_step_twice(tmp_path, caplog):
    log = RunLog(tmp_path)
    log.log_metrics({"val/accuracy": 0.25}, step=0)  # before training
    log.log_metrics({"score/mean": torch.tensor(0.5), "train/skipped_updates": 0}, step=1)
    log.log_metrics({"val/accuracy": 0.5}, step=1)  # the same step, from a callback
    assert read_metrics(tmp_path) == [{"step": "0", "val/accuracy": "0.25"}]  # step 0 is complete
    log.log_metrics({"score/mean": 0.75}, step=2)
    log.save()  # as RLCheckpoint does before publishing step 2
    rows = [{"step": "0", "score/mean": "", "train/skipped_updates": "", "val/accuracy": "0.25"}]
    rows += [{"step": "1", "score/mean": "0.5", "train/skipped_updates": "0", "val/accuracy": "0.5"}]
    assert read_metrics(tmp_path) == [
        *rows,
        {"step": "2", "score/mean": "0.75", "train/skipped_updates": "", "val/accuracy": ""},
    ]
    assert not list(tmp_path.glob("*.tmp"))

    resumed = RunLog(tmp_path)  # from step 1's checkpoint: row 2 was logged after it
    with caplog.at_level(logging.INFO, logger="tinyzero.train.run_log"):
        resumed.resume(tmp_path / METRICS_FILE, 1)
    assert "rows up to step 1 kept, 1 later ones dropped" in caplog.text
    resumed.log_metrics({"score/mean": 0.875}, step=2)
    resumed.finalize("success")
    assert [row["score/mean"] for row in read_metrics(tmp_path)] == ["", "0.5", "0.875"]

    written = (tmp_path / METRICS_FILE).stat().st_mtime_ns
    finished = RunLog(tmp_path)  # from step 2's checkpoint, nothing left to train
    finished.resume(tmp_path / METRICS_FILE, 2)
    finished.save()
    finished.finalize("success")
    assert (tmp_path / METRICS_FILE).stat().st_mtime_ns == written

    fresh = RunLog(tmp_path / "new")  # another folder, from step 1's checkpoint: the earlier rows first
    fresh.resume(tmp_path / METRICS_FILE, 1)
    fresh.finalize("success")
    assert read_metrics(tmp_path / "new") == rows


def test_run_log_reads_the_rows_lightnings_csv_logger_wrote(tmp_path):
    """Training rows at Lightning's 0-based `step` with `train/rl_step` k are step k, beside the
    evaluation and memory rows of step k."""
    (tmp_path / METRICS_FILE).write_text(
        "epoch,memory/x,score/mean,step,train/rl_step,val/accuracy\n,,,0,,0.25\n0,,0.5,0,1.0,\n,7.0,,1,,\n,,,1,,0.5\n"
    )
    assert read_rows(tmp_path / METRICS_FILE) == {
        0: {"val/accuracy": "0.25"},
        1: {"score/mean": "0.5", "memory/x": "7.0", "val/accuracy": "0.5"},
    }


def test_checkpoints_are_verified_and_last_skips_a_corrupt_one(make_cfg, tmp_path, caplog):
    cfg = make_cfg("data.max_steps=3", "callbacks.checkpoint.every_n_steps=1", "callbacks.checkpoint.save_hf=false")
    fit(cfg)
    directory = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3):
        verify_checkpoint(directory / f"step_{step}.ckpt")
    assert not list(directory.glob("*.tmp"))
    # the newest is cut short, as a full disk or a copy interrupted would leave it
    newest = directory / "step_3.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="step_3.ckpt is truncated or corrupt"):
        verify_checkpoint(newest)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        resume_path(str(newest), [directory])
    # one flipped byte inside a member fails its CRC
    middle = directory / "step_2.ckpt"
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = directory / "step_20.ckpt"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(flipped)
    with caplog.at_level(logging.WARNING, logger="tinyzero.train.checkpointing"):
        assert last_good_checkpoint([directory]) == directory / "step_2.ckpt"
    assert "skipping" in caplog.text and "step_20.ckpt" in caplog.text and "step_3.ckpt" in caplog.text
    assert resume_path("last", [tmp_path / "empty"]) is None
    with pytest.raises(FileNotFoundError):
        resume_path(str(tmp_path / "nope.ckpt"), [directory])


def test_keep_last_prunes_old_checkpoints_and_exports(make_cfg, tmp_path):
    cfg = make_cfg("data.max_steps=4", "callbacks.checkpoint.every_n_steps=1", "callbacks.checkpoint.keep_last=2")
    fit(cfg)
    directory = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in directory.glob("step_*.ckpt")) == ["step_3.ckpt", "step_4.ckpt"]
    assert sorted(p.name for p in (directory / "hf").iterdir()) == ["step_3", "step_4"]
    assert prune(directory, 1) == [directory / "step_3.ckpt", directory / "hf" / "step_3"]


def train_command(run_dir, *overrides):
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        *QUICK,
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def shared_paths(cache_dir):
    return [f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir}/data"]


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_ones_and_resumes(make_cfg, cache_dir, tmp_path):
    build(make_cfg())  # the shared tiny model and data exist before the run starts
    run_dir = tmp_path / "run"
    directory = run_dir / "checkpoints"
    command = train_command(
        run_dir, *shared_paths(cache_dir), "data.max_steps=40", "callbacks.checkpoint.every_n_steps=1"
    )
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    caught = None
    deadline = time.monotonic() + 240
    try:
        while process.poll() is None and time.monotonic() < deadline:
            # arm once two checkpoints exist, then kill the moment a write is under way
            if (directory / "step_2.ckpt").exists():
                writing = list(directory.glob("step_*.ckpt.tmp")) + list((directory / "hf").glob("step_*.tmp"))
                if writing:
                    process.send_signal(signal.SIGKILL)
                    caught = writing[0]
                    break
            time.sleep(0.0005)
    finally:
        process.kill()
        process.wait()
    assert caught is not None, f"no checkpoint write was caught in progress: {process.stderr.read()[-2000:]}"
    killed_at = int(caught.name.split("_")[1].split(".")[0])
    finished = sorted(int(p.name[5:-5]) for p in directory.glob("step_*.ckpt"))
    assert finished and max(finished) <= killed_at and max(finished) >= killed_at - 1
    for step in finished:
        verify_checkpoint(directory / f"step_{step}.ckpt")  # every published checkpoint is whole
    newest = max(finished)
    result = subprocess.run(
        train_command(run_dir, *shared_paths(cache_dir), f"data.max_steps={newest + 2}", "ckpt_path=last"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {directory / f'step_{newest}.ckpt'}" in result.stderr + result.stdout
    verify_checkpoint(directory / f"step_{newest + 2}.ckpt")


KILLED_RUN_STEPS = 6


def newest_checkpoint(directory) -> int:
    """The step of the newest published checkpoint (0: none yet)."""
    return max((checkpoint_step(p) for p in directory.glob("step_*.ckpt")), default=0)


def saved_after(directory, step: int):
    """A condition: a checkpoint newer than `step`'s is published."""
    return lambda: newest_checkpoint(directory) > step


def run_files(run_dir) -> dict[str, tuple[str, int]]:
    """{path: (sha256, mtime in ns)} of the run's files but Hydra's own (`.hydra/`, the job's log) and
    the sweep callback's `status.txt`, which every job end rewrites."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if path.is_file() and relative.parts[0] != ".hydra" and path.suffix != ".log" and path.name != "status.txt":
            files[str(relative)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return files


def kill_when(process: subprocess.Popen, condition, delay: float = 0.0) -> bool:
    """SIGKILL `process` `delay` s after `condition()` first holds; False if it exited before."""
    deadline = time.monotonic() + 240
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress in 240 s"
        time.sleep(0.0005)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


# slow: up to six launches of scripts/train.py (a start is ~6 s of CPU) after a reference run; 3 to 4
# minutes on 2 shared cores. The RunLog tests above cover its logic fast.
@pytest.mark.slow
def test_a_run_killed_at_random_moments_resumes_into_one_history(make_cfg, cache_dir, tmp_path):
    """SIGKILLed three or four times and each time relaunched with `ckpt_path=last` in the same folder (as
    a requeued job is), a run ends with the metrics of a run never killed and one metrics.csv holding
    each step once; launched once more, finished, it changes none of its files and exits 0."""
    settings = [
        "algorithm=grpo",  # no critic: half the update and the checkpoint
        f"data.max_steps={KILLED_RUN_STEPS}",
        "callbacks.checkpoint.every_n_steps=1",
        "callbacks.checkpoint.save_hf=false",
        "callbacks.rollout.eval_every_n_steps=2",
    ]
    whole = make_cfg(*settings, f"paths.output_dir={tmp_path}/whole/run")
    L.seed_everything(whole.seed)
    fit(whole)  # also builds the tiny model and data the runs below share
    run_dir = tmp_path / "killed" / "run"  # no sibling run: `last` finds only this run's checkpoints
    directory = run_dir / "checkpoints"
    command = train_command(run_dir, *shared_paths(cache_dir), *settings, "ckpt_path=last")

    def launch(name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)

    # while step 2's checkpoint is written: its rows are on disk, the newest checkpoint is step 1's
    assert kill_when(launch("kill_0"), lambda: (directory / "step_2.ckpt.tmp").exists())
    assert newest_checkpoint(directory) == 1 and read_metrics(run_dir)[-1]["step"] == "2"
    # then at a random moment (seeded) after each new checkpoint: mid-step, mid-evaluation, mid-write;
    # within half the uninterrupted run's shortest step, so that a fast machine does not finish first
    published = sorted(p.stat().st_mtime for p in (tmp_path / "whole" / "run" / "checkpoints").glob("step_*.ckpt"))
    shortest_step = min(later - earlier for earlier, later in zip(published, published[1:]))
    rng, kills = random.Random(0), 1
    for attempt in (1, 2, 3):
        newest, delay = newest_checkpoint(directory), rng.uniform(0, 0.5) * shortest_step
        if newest < KILLED_RUN_STEPS:
            kills += kill_when(launch(f"kill_{attempt}"), saved_after(directory, newest), delay)
    assert kills >= 3
    assert launch("last").wait(timeout=300) == 0, (tmp_path / "last.log").read_text()[-3000:]
    assert newest_checkpoint(directory) == KILLED_RUN_STEPS
    rows = read_metrics(run_dir)
    columns = list(rows[0])
    assert columns[0] == "step" and columns[1:] == sorted(columns[1:]) and not {"epoch", "train/rl_step"} & {*columns}
    assert [row["step"] for row in rows] == [str(step) for step in range(KILLED_RUN_STEPS + 1)]
    assert_same_metrics(step_rows(run_dir), step_rows(tmp_path / "whole" / "run"), range(KILLED_RUN_STEPS + 1))
    assert "will be deleted" not in "".join(log.read_text() for log in tmp_path.glob("*.log"))

    before = run_files(run_dir)
    assert {"metrics.csv", "curves.png", f"checkpoints/step_{KILLED_RUN_STEPS}.ckpt"} <= before.keys()
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"already finished at step {KILLED_RUN_STEPS}" in finished.stdout
    assert run_files(run_dir) == before

    # killed after its last checkpoint, before its plot (as a kill above may land): the relaunch draws it
    (run_dir / "curves.png").unlink()
    redrawn = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert redrawn.returncode == 0, redrawn.stderr[-3000:]
    assert "learning curves:" in redrawn.stdout and "already finished" not in redrawn.stdout
    after = run_files(run_dir)
    drawn = {"curves.png", "behaviour.png", "samples.html"}  # the figures and the samples page, drawn again
    assert after.keys() == before.keys() and {k: v for k, v in after.items() if k not in drawn} == {
        k: v for k, v in before.items() if k not in drawn
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(signum, make_cfg, cache_dir, tmp_path):
    build(make_cfg())
    run_dir = tmp_path / "run"
    command = train_command(
        run_dir, *shared_paths(cache_dir), "data.max_steps=200", "callbacks.rollout.dump_rollouts=true"
    )
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "rollouts" / "step_1_rank_0.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert f"{signal.Signals(signum).name} received: stopping after step" in stdout + stderr
    saved = sorted(int(p.name[5:-5]) for p in (run_dir / "checkpoints").glob("step_*.ckpt"))
    assert len(saved) == 1 and 1 <= saved[0] < 200
    verify_checkpoint(run_dir / "checkpoints" / f"step_{saved[0]}.ckpt")
    assert (run_dir / "checkpoints" / "hf" / f"step_{saved[0]}" / "policy" / "config.json").exists()


def nan_policy_loss(calls_to_poison):
    """The real policy loss, made NaN on the calls numbered in `calls_to_poison` (all if None)."""
    real = policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        pg_loss, clipfrac, approx_kl = real(*args, **kwargs)
        if calls_to_poison is None or calls["n"] in calls_to_poison:
            pg_loss = pg_loss * math.nan
        return pg_loss, clipfrac, approx_kl

    return poisoned


def test_a_nan_loss_skips_the_update_then_aborts_after_n_in_a_row(make_cfg, monkeypatch, caplog):
    # QUICK: 8 prompts, mini-batches of 4, two PPO epochs: four actor updates per step
    monkeypatch.setattr("tinyzero.ppo.update.policy_loss", nan_policy_loss({1}))
    cfg = make_cfg("data.max_steps=2", "callbacks.checkpoint.save_hf=false")
    with caplog.at_level(logging.WARNING, logger="tinyzero.ppo.update"):
        _, module = fit(cfg)
    assert module.rl_step == 2
    assert "step 0: skipped a actor update with non-finite {'actor/pg_loss': nan" in caplog.text
    skipped = {step: row["train/skipped_updates"] for step, row in step_rows(cfg.paths.output_dir).items()}
    assert skipped == {1: 1.0, 2: 0.0}
    for param in module.policy.parameters():
        assert torch.isfinite(param).all()

    monkeypatch.setattr("tinyzero.ppo.update.policy_loss", nan_policy_loss(None))
    cfg = make_cfg(
        "data.max_steps=2",
        "algorithm.ppo_epochs=2",  # four actor updates per step: the third in a row falls in step 0
        "algorithm.nonfinite_abort_after=3",
        "callbacks.checkpoint.save_hf=false",
    )
    with pytest.raises(FloatingPointError, match=r"aborting at step 0: 3 actor updates in a row had a non-finite"):
        fit(cfg)


class OutOfRangeTask(CountdownTask):
    """A task whose reward escapes [0, 1], as a buggy custom reward would."""

    def score(self, response: str, ground_truth: dict) -> float:
        return 2.0


def test_rewards_out_of_range_stop_the_run(make_cfg):
    cfg = make_cfg("data.max_steps=1", "task._target_=test_reliability.OutOfRangeTask")
    with pytest.raises(ValueError, match=r"returned rewards outside \[0.0, 1.0\]: \[2.0\]"):
        fit(cfg)


def checkpoints_under(root) -> list:
    return sorted(root.glob("**/checkpoints/step_*.ckpt"))


def test_last_resumes_only_a_checkpoint_saved_with_the_same_settings(make_cfg, cache_dir, tmp_path, caplog):
    """Two runs of one `run_name`, a sweep's job and a single run with another kl_coef: `last` takes
    neither's checkpoint for the other, and finds the sweep's for a run with its settings."""
    build(make_cfg())
    quick = [*QUICK, *shared_paths(cache_dir), "callbacks.checkpoint.save_hf=false"]

    def run(*overrides):  # `--multirun` must come before the overrides
        command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *overrides, *quick]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    run("--multirun", "algorithm.kl_coef=0.01", "data.max_steps=2")  # outputs/multirun/test/<time>/0
    [swept] = checkpoints_under(tmp_path / "outputs" / "multirun")
    output = run("ckpt_path=last", "data.max_steps=3")  # the recipe's kl_coef=0.001
    assert f"skipping {swept}, saved with other settings: algorithm.kl_coef: 0.01 -> 0.001" in output
    assert "no checkpoint with this run's settings yet, starting fresh" in output
    [single] = checkpoints_under(tmp_path / "outputs" / "runs")
    assert single.name == "step_3.ckpt"
    # the newest checkpoint is the single run's; a run with the sweep job's settings (and more steps) skips it
    cfg = make_cfg("ckpt_path=last", "algorithm.kl_coef=0.01", "data.max_steps=4", f"paths.log_dir={tmp_path}/outputs")
    with caplog.at_level(logging.INFO, logger="tinyzero.train.checkpointing"):
        assert resume_from(cfg) == str(swept)
    assert f"skipping {single}, saved with other settings: algorithm.kl_coef: 0.001 -> 0.01" in caplog.text


# Where the config's classes lived before the package was laid out in layers (commit 56aa59f).
OLD_LAYOUT_TARGETS = {
    "tinyzero.train.callbacks.": "tinyzero.callbacks.",
    "tinyzero.train.rollout_callback.": "tinyzero.callbacks.",
    "tinyzero.train.console.": "tinyzero.console.",
    "tinyzero.train.run_log.": "tinyzero.run_log.",
}


def old_layout(config):
    """`config` with every `_target_` named as the flat package of commit 56aa59f named it."""
    if isinstance(config, dict):
        return {key: old_layout(value) for key, value in config.items()}
    if isinstance(config, list):
        return [old_layout(value) for value in config]
    if isinstance(config, str):
        for new, old in OLD_LAYOUT_TARGETS.items():
            config = config.replace(new, old)
    return config


def test_a_checkpoint_of_the_flat_layout_resumes_with_last_and_trains_on(make_cfg, tmp_path):
    """A checkpoint whose saved config names its classes where they lived before (`tinyzero.callbacks.
    RLCheckpoint`) is the same run for `ckpt_path=last`; a `_target_` naming another class is not."""
    cfg = make_cfg("algorithm=grpo", "data.max_steps=1", "callbacks.checkpoint.save_hf=false")
    fit(cfg)
    [path] = sorted((tmp_path / "run" / "checkpoints").glob("step_*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = run_config(cfg)  # what scripts/train.py keeps in each checkpoint
    checkpoint[CONFIG_KEY] = old_layout(saved)
    assert checkpoint[CONFIG_KEY]["callbacks"]["checkpoint"]["_target_"] == "tinyzero.callbacks.RLCheckpoint"
    torch.save(checkpoint, path)

    more = make_cfg("algorithm=grpo", "data.max_steps=2", "callbacks.checkpoint.save_hf=false", "ckpt_path=last")
    assert resume_from(more) == str(path)
    _, module = fit(more)
    assert module.rl_step == 2
    other = {**saved, "callbacks": {**saved["callbacks"]}}
    other["callbacks"]["rollout"] = {**saved["callbacks"]["rollout"], "_target_": "tinyzero.callbacks.OtherCallback"}
    assert config_differences(other, saved) == [
        f"callbacks.rollout._target_: tinyzero.callbacks.OtherCallback -> {saved['callbacks']['rollout']['_target_']}"
    ]


def test_the_reference_is_not_checkpointed_and_other_reference_weights_are_refused(make_cfg, tmp_path):
    """A checkpoint holds the policy and its optimizer but not the frozen reference, only the hash of its
    weights: a resume reloads it from model.path and goes on, also from a checkpoint that still holds a
    reference (saved before); model.path holding other weights is refused, naming the path."""
    from transformers import AutoModelForCausalLM

    from tinyzero.errors import ConfigError
    from tinyzero.models.loading import load_policy, weights_sha256

    settings = ("algorithm=grpo", "callbacks.checkpoint.save_hf=false")
    cfg = make_cfg(*settings, "data.max_steps=1")
    fit(cfg)
    [path] = sorted((tmp_path / "run" / "checkpoints").glob("step_*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    names = list(checkpoint["state_dict"])
    assert names and all(name.startswith("policy.") for name in names)
    assert checkpoint["tinyzero"]["reference_sha256"] == weights_sha256(load_policy(cfg.model.path))

    older = tmp_path / "older.ckpt"  # as saved before: the reference's weights beside the policy's
    policy = {name: value for name, value in checkpoint["state_dict"].items()}
    checkpoint["state_dict"].update({name.replace("policy.", "reference.", 1): v for name, v in policy.items()})
    torch.save(checkpoint, older)
    _, module = fit(make_cfg(*settings, "data.max_steps=2", f"ckpt_path={older}"))
    assert module.rl_step == 2

    other = tmp_path / "other_base"
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(other)
    for extra in Path(cfg.model.path).iterdir():  # the tokenizer and the base's own record
        if not (other / extra.name).exists():
            shutil.copy(extra, other / extra.name)
    resumed = make_cfg(*settings, "data.max_steps=2", f"ckpt_path={path}", f"model.path={other}")
    with pytest.raises(ConfigError, match=f"model.path={other} holds"):
        fit(resumed)
