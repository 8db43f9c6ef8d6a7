"""Two gloo ranks (ModelParallelStrategy): each step's prompts split between them, and FSDP2 checkpoints as
sharded folders without the reference, found by `ckpt_path=last`, resumed to the uninterrupted run's
metrics, verified, and turned into Hugging Face folders."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import QUICK, ROOT
from run_helpers import step_rows

from tinyzero.data.datamodule import StepBatchSampler
from tinyzero.models import load_critic, load_policy
from tinyzero.models.loading import weights_sha256
from tinyzero.train.build import build
from tinyzero.train.checkpointing import SHARDED_METADATA, CorruptCheckpointError, verify_checkpoint
from tinyzero.train.memory import checkpoint_bytes_per_rank


def two_ranks(run_dir, cache_dir, *overrides):
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        *QUICK,
        "trainer=fsdp_cpu",
        "algorithm.critic_warmup=2",  # step 1 updates the critic only: the actor's optimizer has never stepped
        "callbacks.checkpoint.every_n_steps=1",
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir}/data",
        f"paths.output_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=run_dir.parent, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow  # two 2-process runs: about 80 s on 2 cores
def test_sharded_checkpoints_resume_with_last_leave_the_reference_out_and_export(tmp_path, cache_dir, make_cfg):
    from torch.distributed.checkpoint import FileSystemReader

    build(make_cfg())  # the shared tiny model exists before the ranks start
    whole = tmp_path / "whole" / "run"
    whole.parent.mkdir()
    two_ranks(
        whole,
        cache_dir,
        "data.max_steps=2",
        "callbacks.checkpoint.save_hf=true",
        "callbacks.rollout.dump_rollouts=true",
        "callbacks.rollout.eval_every_n_steps=2",
    )
    assert_rollouts_split_across_ranks(whole, make_cfg())
    first = whole / "checkpoints" / "step_1.ckpt"
    assert first.is_dir() and (first / SHARDED_METADATA).is_file()  # each rank wrote its shards
    verify_checkpoint(first)
    saved = FileSystemReader(str(first)).read_metadata().state_dict_metadata
    roles = {key.split(".")[1] for key in saved if key.startswith("state_dict.")}
    assert roles == {"policy", "critic"}  # no reference
    # the memory plan's computed size per rank, within what the tiny model adds to it: a tied head saved
    # under both names (2 % here) and each entry's own record (measured 5.8 % and 7.8 % more on the two ranks)
    computed = checkpoint_bytes_per_rank(make_cfg("trainer=fsdp_cpu"))
    for shard in first.glob("__*_0.distcp"):
        assert computed <= shard.stat().st_size <= 1.1 * computed, shard.name
    meta = torch.load(first / SHARDED_METADATA, weights_only=False)
    assert meta["tinyzero"]["reference_sha256"] == weights_sha256(load_policy(make_cfg().model.path))

    # a run stopped after step 1 (its checkpoint and history, as the whole run wrote them), and one launched
    # beside it with ckpt_path=last: step 2 as if never stopped
    sweep = tmp_path / "sweep"
    (sweep / "a" / "checkpoints").mkdir(parents=True)
    shutil.copytree(first, sweep / "a" / "checkpoints" / first.name)
    shutil.copy(whole / "metrics.csv", sweep / "a" / "metrics.csv")
    output = two_ranks(
        sweep / "b", cache_dir, "data.max_steps=2", "callbacks.checkpoint.save_hf=false", "ckpt_path=last"
    )
    assert f"resuming from {sweep / 'a' / 'checkpoints' / 'step_1.ckpt'}" in output
    resumed = step_rows(sweep / "b")[2]
    uninterrupted = {key: value for key, value in step_rows(whole)[2].items() if not key.startswith("val/")}
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert resumed[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key

    # the export script reads step 2's shards in one process: the run's own exports, exactly
    result = subprocess.run(
        [
            sys.executable,
            "scripts/export_hf.py",
            str(whole / "checkpoints" / "step_2.ckpt"),
            "--out",
            str(tmp_path / "hf"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    own = whole / "checkpoints" / "hf" / "step_2"
    for role, load in (("policy", load_policy), ("critic", load_critic)):
        exported, written = load(str(tmp_path / "hf" / role)).state_dict(), load(str(own / role)).state_dict()
        assert exported.keys() == written.keys()
        assert all(torch.equal(exported[name], written[name]) for name in written), role

    cut = tmp_path / "cut.ckpt"
    shutil.copytree(first, cut)
    shard = next(cut.glob("__1_*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match="shorter than"):
        verify_checkpoint(cut)


def assert_rollouts_split_across_ranks(run_dir, cfg) -> None:
    """Each step's prompts are split between the two ranks with none lost or repeated, every prompt gets its
    n responses, and the held-out evaluation gathers both ranks' responses (rank 0 writes them all, in order)."""
    _, _, datamodule = build(cfg)
    datamodule.setup()
    sampler = StepBatchSampler(len(datamodule.train_set), cfg.data.train_batch_size, 2, cfg.data.seed)
    for step in (1, 2):
        per_rank = []
        for rank in (0, 1):
            path = run_dir / "rollouts" / f"step_{step}_rank_{rank}.jsonl"
            per_rank.append([json.loads(line)["prompt_index"] for line in path.read_text().splitlines()])
        assert not set(per_rank[0]) & set(per_rank[1]), "a prompt was generated on both ranks"
        want = [datamodule.train_set.items[i]["index"] for i in sampler.batch(step - 1)]
        assert sorted(set(per_rank[0]) | set(per_rank[1])) == sorted(want)
        for indices in per_rank:
            assert all(indices.count(i) == cfg.rollout.n for i in set(indices))
    heldout = [json.loads(line) for line in open(run_dir / "heldout" / "step_2.jsonl")]
    assert [row["index"] for row in heldout] == list(range(cfg.data.test_size))


@pytest.mark.slow  # a process group of one and a run: about 30 s on 2 cores
def test_a_one_device_mesh_trains_as_the_one_gpu_offload_recipes_build_it(tmp_path, cache_dir, make_cfg):
    """countdown_1.5b_24gb and countdown_3b_48gb run FSDP2 on a mesh of one GPU (trainer=fsdp, devices=1),
    where CPUOffloadPolicy applies: here the same mesh on one CPU rank (offload itself needs CUDA)."""
    build(make_cfg())
    run = tmp_path / "one" / "run"
    run.parent.mkdir()
    two_ranks(run, cache_dir, "trainer.devices=1", "data.max_steps=2", "algorithm.critic_warmup=0")
    rows = step_rows(run)
    assert [step for step, row in rows.items() if "actor/pg_loss" in row] == [1, 2]
    assert (run / "checkpoints" / "step_2.ckpt").is_dir()  # the strategy's sharded checkpoint, one rank's shards
