"""End-to-end PPO / GRPO steps on the tiny model, through the real config and builder."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import QUICK, ROOT
from run_helpers import fit, read_metrics
from tolerances import ppo_step_bound

from tinyzero.data.datamodule import StepBatchSampler
from tinyzero.models import load_critic, load_policy
from tinyzero.train.build import build
from tinyzero.train.callbacks import RLCheckpoint
from tinyzero.train.checkpointing import run_config
from tinyzero.train.rollout_callback import RolloutCallback

STEP_METRICS = {
    "score/mean",
    "score/accuracy",
    "response_length/mean",
    "kl/reward_kl",
    "actor/entropy",
    "actor/clipfrac",
    "actor/pg_loss",
    "actor/approx_kl",
    "critic/value_loss",
    "advantages/mean",
    "perf/tokens_per_s",
    "time/generate",
    "time/push_weights",
    "time/experience",
    "time/update",
    "time/step",
}


def changed(before: torch.nn.Module, after: torch.nn.Module) -> bool:
    return any(
        not torch.equal(a.detach().cpu(), b.detach().cpu()) for a, b in zip(before.parameters(), after.parameters())
    )


def test_one_ppo_step_updates_policy_and_critic_and_logs_metrics(make_cfg):
    cfg = make_cfg("data.max_steps=1", "algorithm.actor_lr=1e-3")
    trainer, module = fit(cfg)
    assert module.rl_step == 1
    assert changed(load_policy(cfg.model.path), module.policy)
    critic_before = load_critic(cfg.model.path)
    # the fresh head is random, so compare the shared backbone
    assert changed(critic_before.model, module.critic.model)
    rows = read_metrics(cfg.paths.output_dir)
    logged = {key for row in rows for key, value in row.items() if value != ""}
    assert STEP_METRICS <= logged, STEP_METRICS - logged
    step_row = next(row for row in rows if row["score/mean"])
    assert 0.0 <= float(step_row["score/accuracy"]) <= 1.0
    assert torch.isfinite(torch.tensor(float(step_row["critic/value_loss"])))
    hf = os.path.join(cfg.paths.output_dir, "checkpoints", "hf", "step_1")
    reloaded = load_policy(os.path.join(hf, "policy"))
    for a, b in zip(reloaded.parameters(), module.policy.parameters()):
        torch.testing.assert_close(a, b)
    assert load_critic(os.path.join(hf, "critic")).score.weight.shape == (1, module.critic.config.hidden_size)


def test_grpo_runs_without_a_critic(make_cfg):
    cfg = make_cfg("algorithm=grpo", "data.max_steps=1", "algorithm.actor_lr=1e-3")
    _, module = fit(cfg)
    assert module.critic is None
    assert changed(load_policy(cfg.model.path), module.policy)
    logged = {key for row in read_metrics(cfg.paths.output_dir) for key, value in row.items() if value != ""}
    assert {"actor/kl_loss", "actor/pg_loss", "score/mean"} <= logged
    assert "critic/value_loss" not in logged


class RecordingCallback(RolloutCallback):
    """The real callback and engine, with each engine call recorded in order."""

    def __init__(self, inner: RolloutCallback):
        super().__init__(inner.engine_factory, inner.sampling, inner.eval_every_n_steps)
        self.calls = []

    def setup(self, trainer, module, stage):
        super().setup(trainer, module, stage)
        engine = self.engine
        for name in ("wake_up", "load_weights", "reset_prefix_cache", "generate", "sleep"):
            method = getattr(engine, name)

            def record(*args, _name=name, _method=method, **kwargs):
                label = f"{_name}({args[0]})" if _name == "wake_up" else _name
                self.calls.append(label)
                return _method(*args, **kwargs)

            setattr(engine, name, record)


def test_phase_cycle_call_order_and_weight_push(make_cfg):
    cfg = make_cfg("data.max_steps=2", "algorithm.actor_lr=1e-3")
    trainer, module, datamodule = build(cfg)
    index = next(i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, RolloutCallback))
    recorder = RecordingCallback(trainer.callbacks[index])
    trainer.callbacks[index] = recorder
    trainer.fit(module, datamodule=datamodule)
    cycle = ["wake_up(['weights'])", "load_weights", "reset_prefix_cache", "wake_up(['kv_cache'])", "generate", "sleep"]
    assert recorder.calls == cycle * 2
    # after the last push the engine holds the weights the policy had then; one update later they differ
    recorder.push_weights(module)
    for name, param in module.policy.named_parameters():
        torch.testing.assert_close(recorder.engine.params[name], param.detach())


def test_generation_after_a_push_reflects_the_new_weights(make_cfg):
    from tinyzero.models.tiny import build_tiny_model
    from tinyzero.rollout import SamplingParams

    cfg = make_cfg("data.max_steps=1")
    trainer, module, datamodule = build(cfg)
    module.configure_model()
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback))
    callback.setup(trainer, module, "fit")
    prompts = [
        module.tokenizer("User: Using the numbers [3, 4], create an equation that equals 12.\nAssistant:")["input_ids"]
    ]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    other = build_tiny_model(
        module.policy.config.vocab_size,
        module.tokenizer.eos_token_id,
        seed=123,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
    )
    for policy in (module.policy, other):
        module.policy = policy
        callback.push_weights(module)
        for name, param in policy.named_parameters():
            assert torch.equal(callback.engine.params[name], param.detach()), name
        got = callback.generate(prompts, greedy).response_ids[0]
        ids = torch.tensor(prompts)
        want = policy.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=module.tokenizer.eos_token_id,
            pad_token_id=module.tokenizer.pad_token_id,
        )
        want = want[0, ids.shape[1] :].tolist()
        eos = module.tokenizer.eos_token_id
        assert got == (want[: want.index(eos) + 1] if eos in want else want)


def test_generate_refuses_while_asleep(make_cfg):
    from tinyzero.rollout import SamplingParams

    cfg = make_cfg()
    trainer, module, _ = build(cfg)
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback))
    callback.setup(trainer, module, "fit")
    engine = callback.engine
    with pytest.raises(RuntimeError, match="kv_cache"):
        engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="wake_up tags"):
        engine.wake_up(["kv"])


def test_resume_continues_at_the_right_step_with_the_same_optimizer_state(make_cfg, tmp_path):
    cfg = make_cfg("data.max_steps=2", "callbacks.checkpoint.every_n_steps=1", "callbacks.checkpoint.save_hf=false")
    fit(cfg)
    ckpt = os.path.join(cfg.paths.output_dir, "checkpoints", "step_1.ckpt")
    saved = torch.load(ckpt, weights_only=False)
    resumed_cfg = make_cfg(
        "data.max_steps=3",
        f"ckpt_path={ckpt}",
        "callbacks.checkpoint.save_hf=false",
        f"paths.output_dir={tmp_path}/resumed",
    )
    trainer, module, datamodule = build(resumed_cfg)
    seen = {}

    import lightning as L

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if "step" not in seen:
                seen["step"] = module.rl_step
                seen["optimizer"] = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
                seen["batch"] = batch["index"].tolist()

    trainer.callbacks.append(Capture())
    trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_cfg.ckpt_path)
    assert seen["step"] == 1
    assert module.rl_step == 3
    bar = trainer.progress_bar_callback.train_progress_bar  # RL steps of the whole run, from the resumed one
    assert (bar.initial, bar.total, bar.desc) == (1, 3, "RL steps: ")
    for got, want in zip(seen["optimizer"], saved["optimizer_states"]):
        for key in want["state"]:
            for name, value in want["state"][key].items():
                torch.testing.assert_close(got["state"][key][name], value)
    # the data continues where it stopped: step 1's prompts, as the uninterrupted run saw them
    uninterrupted = StepBatchSampler(len(datamodule.train_set), cfg.data.train_batch_size, 2, cfg.data.seed)
    assert seen["batch"] == [datamodule.train_set.items[i]["index"] for i in uninterrupted.batch(1)]


def run_train(*overrides, timeout=300, cwd=None):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.kl_coeff=0.1", "kl_coeff"),
        (
            "algorithm.adv_estimator=reinforce",
            "algorithm.adv_estimator='reinforce' is not allowed; choose one of ['gae', 'grpo']",
        ),
        ("algorithm=dpo", "algorithm/dpo"),
        ("data.template=chat", "data.template='chat' is not allowed"),
        ("rollout.n=0", "rollout.n=0 must be an integer >= 1"),
        ("kernels.chunk_tokens=0", "kernels.chunk_tokens=0 must be 'auto' or an integer >= 1"),
        # issue 19, point 7: each of these once got past the checks
        ("data.max_steps=-1", "data.max_steps=-1 must be null (data.epochs decide) or an integer >= 1"),
        ("rollout.n=2.5", "rollout.n=2.5 must be an integer >= 1"),
        ("data.train_batch_size=1.5", "data.train_batch_size=1.5 must be an integer >= 1"),
        ("data.source=/tmp/no_such_data", "data.source=/tmp/no_such_data does not exist"),
        (
            "+algorithm.kl_coeff=0.1",
            "+algorithm.kl_coeff adds a key that nothing reads; did you mean algorithm.kl_coef?",
        ),  # noqa: E501
        ("algorithm.kl_loss_coef=-0.1", "algorithm.kl_loss_coef=-0.1 must be a number >= 0"),
        ("rollout.temperature=-1", "rollout.temperature=-1 must be a number >= 0"),
        ("rollout.top_p=0", "rollout.top_p=0 must be a number in (0, 1]"),
        ("algorithm.kl_coef=0.01", "algorithm.kl_coef is set but this recipe never reads it"),
        ("task=multiplication", "task=multiplication: this recipe pre-trains its base model for task countdown_easy"),
        ("task=multiplication +task.min_count=2", "task.min_count do not belong to tinyzero.tasks.MultiplicationTask"),
        ("kernels.backend=cuda", "kernels.backend='cuda' is not allowed; choose one of ['auto', 'torch', 'triton']"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(override, message, tmp_path):
    """What `scripts/train.py` does with the command's overrides, in this process: compose, then `build`,
    whose checks come before anything loads."""
    from hydra import compose, initialize_config_dir

    overrides = ["experiment=countdown_tiny", f"paths.cache_dir={tmp_path}/cache", *override.split()]
    with pytest.raises(Exception) as failure:  # Hydra's own errors come from compose, ours from build
        with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
            build(compose(config_name="train", overrides=overrides), overrides)
    assert message in str(failure.value)
    assert not (tmp_path / "cache").exists(), "a model was built before the config was checked"


def test_a_config_error_prints_one_line_exits_2_and_leaves_no_run_folder(tmp_path):
    result = run_train(
        "experiment=countdown_tiny", "data.max_steps=-1", f"paths.cache_dir={tmp_path}/cache", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: data.max_steps=-1 must be null (data.epochs decide) or an integer >= 1"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


def test_a_gpu_recipe_without_vllm_says_what_to_install_in_one_line(tmp_path):
    result = run_train("experiment=countdown_3b", timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: rollout.engine.kind=vllm")
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("task", ["multiplication", "multiplication_tiny", "countdown"])
def test_a_task_switch_on_the_demo_recipe_composes(task, make_cfg):
    """The demo's task settings live in its task config, so `task=` swaps all of them."""
    from hydra.utils import instantiate

    from tinyzero.train.build import validate

    cfg = make_cfg(f"task={task}", f"model.pretrain.task={task}")
    validate(cfg)
    assert type(instantiate(cfg.task)).__name__ == ("CountdownTask" if task == "countdown" else "MultiplicationTask")


def test_recipe_prints_with_cfg_job():
    result = run_train("experiment=countdown_3b", "--cfg", "job", timeout=60)
    assert result.returncode == 0, result.stderr
    for needle in (
        "Qwen/Qwen2.5-3B",
        "train_batch_size: 256",
        "actor_lr: 1.0e-06",
        "critic_lr: 1.0e-05",
        "kl_coef: 0.001",
        "max_new_tokens: 1024",
        "Jiayi-Pan/Countdown-Tasks-3to4",
        "ppo_mini_batch_size: 64",  # TinyZero's script since commit 96b4d57 ("Fix Ray OOM"; 128 before)
        "ppo_micro_batch_size: 8",
    ):
        assert needle in result.stdout, needle


def test_kernel_paths_give_the_eager_losses(make_cfg, tmp_path):
    """The PPO step with the Triton kernels (under the interpreter), with the fused lm_head
    (no [tokens, vocab] logits) and with each prompt's forward shared by its responses matches
    the eager, unfused reference."""
    logged = {}
    paths = {"eager": ("torch", False, False), "fused torch": ("torch", True, False)}
    paths |= {"triton": ("triton", False, False), "fused triton": ("triton", True, False)}
    paths["shared prompts"] = ("torch", False, True)
    for name, (backend, fused, shared) in paths.items():
        cfg = make_cfg(
            "data.max_steps=1",
            f"kernels.backend={backend}",
            f"kernels.fused_lm_head={fused}",
            f"model.share_prompt_forward={shared}",
            "kernels.chunk_tokens=5",
            f"paths.output_dir={tmp_path}/{name.replace(' ', '_')}",
            "callbacks.checkpoint.save_hf=false",
        )
        _, module = fit(cfg)
        assert module.kernels_backend == backend and module.head_kernels["fused_head"] == fused
        row = next(r for r in read_metrics(cfg.paths.output_dir) if r.get("actor/pg_loss"))
        logged[name] = row
    for key in (
        "actor/pg_loss",
        "actor/entropy",
        "actor/approx_kl",
        "critic/value_loss",
        "kl/reward_kl",
        "advantages/mean",
        "critic/returns_mean",
        "actor/grad_norm",
    ):
        # the same step through other sums (kernels, chunks): `ppo_step_bound`, floor bound·log V
        bound = ppo_step_bound(cfg)
        floor = bound * math.log(cfg.model.pretrain.vocab_size)
        for name in paths:
            got, want = float(logged[name][key]), float(logged["eager"][key])
            assert got == pytest.approx(want, rel=bound, abs=floor), (name, key)


def test_eval_script_reproduces_the_logged_accuracy(make_cfg, tmp_path):
    from tinyzero.analysis.evaluate import evaluate_checkpoint

    cfg = make_cfg("data.max_steps=1", "algorithm.actor_lr=1e-3", "callbacks.rollout.eval_every_n_steps=1")
    trainer, module, datamodule = build(cfg)
    next(cb for cb in trainer.callbacks if isinstance(cb, RLCheckpoint)).run_config = run_config(cfg)  # as train.py
    trainer.fit(module, datamodule=datamodule)
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback))
    logged = callback.eval_history[-1]
    assert logged["step"] == 1
    policy = os.path.join(cfg.paths.output_dir, "checkpoints", "hf", "step_1", "policy")
    result = evaluate_checkpoint(
        policy,
        module.task,
        cfg.data,
        samples=2,
        temperature=1.0,
        max_new_tokens=cfg.rollout.max_new_tokens,
        seed=0,
        output=tmp_path / "eval.jsonl",
    )
    assert result["accuracy"] == pytest.approx(logged["val/accuracy"])
    assert result["mean_score"] == pytest.approx(logged["val/score"])
    assert result["response_length"] == pytest.approx(logged["val/response_length"])
    behaviours = {key: value for key, value in result.items() if key.startswith("behaviour/")}
    assert behaviours and behaviours == pytest.approx({key: logged[f"val/{key}"] for key in behaviours})
    assert 0.0 <= result["pass@2"] <= 1.0
    lines = (tmp_path / "eval.jsonl").read_text().splitlines()
    assert len(lines) == result["problems"] == cfg.data.test_size
    # the run wrote the same greedy responses, in the test set's order, at each evaluation
    written = [json.loads(line) for line in open(os.path.join(cfg.paths.output_dir, "heldout", "step_1.jsonl"))]
    assert [row["response"] for row in written] == [json.loads(line)["response"] for line in lines]
    assert sorted(os.listdir(os.path.join(cfg.paths.output_dir, "heldout"))) == ["step_0.jsonl", "step_1.jsonl"]
    # a training checkpoint gives the same numbers, through its export and, without one, its own weights
    ckpt = os.path.join(cfg.paths.output_dir, "checkpoints", "step_1.ckpt")
    for label in ("with its export", "without"):
        again = evaluate_checkpoint(
            ckpt, module.task, cfg.data, 2, 1.0, cfg.rollout.max_new_tokens, 0, tmp_path / label / "eval.jsonl"
        )
        assert again == result, label
        shutil.rmtree(policy, ignore_errors=True)
    assert (tmp_path / "without" / "step_1" / "policy" / "config.json").exists()


@pytest.mark.slow  # over 20 s on 2 cores: in `make test`, not in the quick `-m "not slow"` run
def test_eval_script_takes_a_training_checkpoint_as_readme_writes_it(tmp_path, cache_dir):
    """README: `python scripts/eval.py experiment=countdown_tiny checkpoint=...`, here on a `.ckpt`."""
    paths = [f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir}/data"]
    samples = ["callbacks.rollout.print_samples_every_n_steps=1", "rollout.n=4"]
    run = run_train(*QUICK, *paths, "data.max_steps=1", *samples, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout + run.stderr
    for noise in ("in eval mode", "will be deleted", "weights_only", "GPU available", "LeafSpec", "Epoch 0"):
        assert noise not in printed, noise
    # two samples of two different prompts, each with its prompt, target and reward on lines of their own
    prompts = [line for line in run.stdout.splitlines() if line.startswith("  prompt:   ")]
    assert len(prompts) == 2 and prompts[0] != prompts[1], run.stdout
    assert run.stdout.count("\n  target:   {") == 2 and "[step 1] sample 2 of 2, reward " in run.stdout
    script = os.path.join(ROOT, "scripts", "eval.py")
    expected = {
        f"{tmp_path}/run/checkpoints/step_1.ckpt": (0, "accuracy="),
        f"{tmp_path}/run/metrics.csv": (2, "is neither a Hugging Face model folder nor a step_K.ckpt"),
    }
    for checkpoint, (code, needle) in expected.items():
        result = subprocess.run(
            [sys.executable, script, "experiment=countdown_tiny", *paths, *QUICK[3:7], f"checkpoint={checkpoint}"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode == code, result.stderr[-2000:]
        assert needle in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
