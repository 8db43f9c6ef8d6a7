"""The memory plan's advice: each suggested change is a real override whose printed figures are the
plan of the recipe with it, only settings the run reads are suggested, and the planning tools leave
no run folder. Shapes come from `model.architecture` (no download)."""

import logging
import os
import subprocess
import sys
from functools import cache

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from tinyzero.train.memory import check_at_startup, plan_for
from tinyzero.train.memory_advice import advice, combination, suggestions
from tinyzero.train.memory_estimate import GIB
from tinyzero.train.memory_switches import Change

ONE_GPU_24 = ["experiment=countdown_1.5b", "gpu_memory_gib=24"]


@pytest.fixture
def recipe():
    """`recipe(overrides)`: (the config, a Composer for it), as scripts/memory_plan.py composes them."""
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):

        def make(overrides):
            @cache
            def composed(groups=()):
                return compose(config_name="train", overrides=overrides + list(groups))

            return composed(), composed

        yield make


def replanned(base: list[str], change: Change):
    """The plan of `base` with the change's overrides composed by Hydra: an override naming a key
    the config lacks fails here."""
    cfg = compose(config_name="train", overrides=base + change.overrides)
    return plan_for(cfg, cfg.gpu_memory_gib * GIB, "vllm")


def cumulative(steps):
    applied = Change()
    for step in steps:
        applied = applied.then(step.change)
        yield applied, step


@pytest.mark.parametrize(
    "extra",
    [[], ["kernels.fused_lm_head=false", "model.gradient_checkpointing=false"]],
    ids=["recipe", "unfused-no-checkpointing"],
)
def test_one_gpu_recipe_that_does_not_fit_gets_real_changes_planned_as_printed(recipe, extra):
    base = ONE_GPU_24 + extra
    cfg, composer = recipe(base)
    gpu_bytes = 24 * GIB
    plan = plan_for(cfg, gpu_bytes, "vllm")
    assert not plan.fits(gpu_bytes)
    single = suggestions(cfg, gpu_bytes, "vllm", composer)
    assert single and single[0].plan.fits(gpu_bytes) == (extra == [])
    assert [s.plan.peak for s in single] == sorted(s.plan.peak for s in single)
    printed = [" ".join(line.split()) for line in advice(cfg, plan, gpu_bytes, "vllm", composer)]
    for s in single:
        assert s.plan.peak < plan.peak
        again = replanned(base, s.change)
        assert (s.plan.train_total, s.plan.generate_total) == (again.train_total, again.generate_total)
        # trainer=gpu builds no device mesh: FSDP2's CPU offload does not take effect there (issue 23)
        assert not any(o.startswith("fsdp.offload") for o in s.change.overrides), s.change
        assert f"{' '.join(s.change.overrides)} {s.plan.figures(gpu_bytes)} ({s.cost})" in printed
    steps = combination(cfg, gpu_bytes, "vllm", composer)
    for applied, step in cumulative(steps):
        again = replanned(base, applied)
        assert (step.plan.train_total, step.plan.generate_total) == (again.train_total, again.generate_total)
        offloads = [o for o in step.change.overrides if o.startswith("fsdp.offload")]
        assert not offloads or "trainer=fsdp" in applied.groups
    assert steps[-1].plan.fits(gpu_bytes)


def test_offload_is_planned_only_where_it_takes_effect(recipe):
    gpu_bytes = 80 * GIB
    for name, takes_effect in (("countdown_1.5b", False), ("countdown_3b", True)):
        cfg, _ = recipe([f"experiment={name}"])
        offloaded, _ = recipe([f"experiment={name}", "fsdp.offload_optimizer=true", "fsdp.offload_reference=true"])
        lower = plan_for(offloaded, gpu_bytes, "vllm").train_total < plan_for(cfg, gpu_bytes, "vllm").train_total
        assert lower == takes_effect, name


def test_kept_graphs_hold_the_engines_weights_and_cache_through_the_train_phase(recipe):
    """rollout.engine.compiled.keep_graphs: the compiled engine's weights and KV cache, as the generate phase
    counts them, are in the train phase too; the generate phase does not change."""
    base = ["experiment=countdown_1.5b", "rollout.engine.kind=compiled"]
    (dropped, _), (kept, _) = recipe(base), recipe([*base, "rollout.engine.compiled.keep_graphs=true"])
    dropped, kept = plan_for(dropped, 80 * GIB, "compiled"), plan_for(kept, 80 * GIB, "compiled")
    engine = {name: dropped.generate[name] for name in ("engine weights", "KV cache (max_num_seqs sequences)")}
    assert {name: kept.train[name] for name in engine} == engine
    assert kept.train_total - dropped.train_total >= sum(engine.values())  # with the allocator's slack on them
    assert kept.generate == dropped.generate


def test_a_recipe_that_fits_gets_no_advice(recipe):
    cfg, composer = recipe(["experiment=countdown_1.5b"])
    plan = plan_for(cfg, 140 * GIB, "vllm")
    assert plan.fits(140 * GIB) and advice(cfg, plan, 140 * GIB, "vllm", composer) == []


def test_the_startup_warning_names_the_same_changes(recipe, caplog):
    """Composed by the compose API there is no Composer (no `trainer=` change); a sharded recipe
    is still offered its switches, offload among them."""
    cfg, composer = recipe(["experiment=countdown_3b", "gpu_memory_gib=24"])
    with caplog.at_level(logging.WARNING, logger="tinyzero.train.memory"):
        check_at_startup(cfg, "vllm")
    expected = advice(cfg, plan_for(cfg, 24 * GIB, "vllm"), 24 * GIB, "vllm")
    assert "fsdp.offload_optimizer=true" in expected[1]
    assert "\n".join(expected) in caplog.text and "expect out-of-memory" in caplog.text


HYDRA_MAIN = """
import hydra
from tinyzero.train.memory import check_at_startup

@hydra.main(version_base="1.3", config_path={conf!r}, config_name="train")
def main(cfg):
    check_at_startup(cfg, "vllm")

main()
"""


def test_the_startup_warning_under_hydra_main_offers_more_gpus(tmp_path):
    """scripts/train.py's path: the run's overrides recompose the recipe with trainer=fsdp."""
    script = tmp_path / "start.py"
    script.write_text(HYDRA_MAIN.format(conf=os.path.join(ROOT, "conf")))
    result = run(script, *ONE_GPU_24, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer=fsdp trainer.devices=4  train 18.2 GiB, generate 19.9 GiB: fits" in result.stdout + result.stderr


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, _ in os.walk(folder) for n in dirs)


def test_memory_plan_as_readme_writes_it_exits_1_with_advice_and_leaves_no_folder(tmp_path):
    memory_plan = os.path.join(ROOT, "scripts/memory_plan.py")
    outputs = listing(os.path.join(ROOT, "outputs"))
    result = run(memory_plan, *ONE_GPU_24, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    assert out.index("generate phase:") < out.index("the train phase needs about 57.9 GiB per GPU")
    assert out.index("needs about") < out.index("changes that lower the peak (57.9 GiB per GPU)")
    assert "  trainer=fsdp trainer.devices=4  train 18.2 GiB, generate 19.9 GiB: fits" in out
    assert "fsdp.offload" not in out
    fits = run(memory_plan, "experiment=countdown_1.5b", "gpu_memory_gib=140", cwd=tmp_path)
    assert fits.returncode == 0 and fits.stdout.rstrip().endswith("fits in 140 GiB per GPU")
    wrong = run(memory_plan, "experiment=countdown_1.5b", cwd=tmp_path)
    assert wrong.returncode == 2 and "set gpu_memory_gib=" in wrong.stderr and "Traceback" not in wrong.stderr
    assert os.listdir(tmp_path) == [] and listing(os.path.join(ROOT, "outputs")) == outputs


def test_gpu_check_without_cuda_leaves_no_folder(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: gpu_check would run")
    outputs = listing(os.path.join(ROOT, "outputs"))
    result = run(os.path.join(ROOT, "scripts/gpu_check.py"), cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA device" in result.stdout
    assert os.listdir(tmp_path) == [] and listing(os.path.join(ROOT, "outputs")) == outputs


@pytest.mark.parametrize(
    "name, gib", [("countdown_3b_lora_24gb", 24), ("countdown_1.5b_24gb", 24), ("countdown_3b_48gb", 48)]
)
def test_the_one_gpu_recipes_fit_their_card_with_lora_and_offload_on_lines_of_their_own(recipe, name, gib):
    from tinyzero.distributed import fsdp2_policies
    from tinyzero.train.build import validate
    from tinyzero.train.memory import offloads

    cfg, _ = recipe([f"experiment={name}"])
    validate(cfg, [])  # neither LoRA nor offload refused where the recipe uses them
    assert (cfg.task.name, cfg.data.template, cfg.rollout.max_new_tokens) == ("countdown", "base", 1024)  # TinyZero's
    plan = plan_for(cfg, gib * GIB, "vllm")
    assert plan.fits(gib * GIB), plan.table()
    full = plan_for(recipe([f"experiment={name}", "model.lora.rank=0", "fsdp.offload_optimizer=false"])[0], 1, "vllm")
    if cfg.model.lora.rank:
        assert plan.train["policy LoRA weights + AdamW moments"] < 0.2 * plan.train["policy frozen base weights"]
        assert "reference params (sharded)" not in plan.train and not plan.host.get("policy offloaded shards")
        assert plan.train_total < full.train_total - full.train["policy AdamW moments (sharded)"]
    else:
        # the one-GPU mesh applies the offload: the shards leave the GPU for pinned host memory
        assert offloads(cfg, "offload_optimizer") and cfg.trainer.devices == 1
        assert "offload_policy" in fsdp2_policies(cfg.fsdp, "policy", "cuda")
        assert plan.train["policy params (sharded)"] == 0 < plan.host["policy offloaded shards, grads, AdamW"]
        assert plan.train["gathered root + 2 layers"] > 0
        assert plan.train_total < full.train_total
    assert plan.check(gib * GIB, host_bytes=64 * GIB) == []
    assert plan.check(gib * GIB, host_bytes=plan.host_total / 2)[-1].startswith("offload and the sleeping engine")
