"""`VLLMEngine` on CPU against a stand-in `vllm` module that has vLLM 0.33.0's signatures and
records every call: keyword names, the phase cycle, level-2 completeness, seeds, LOCAL_RANK."""

import importlib.machinery
import json
import os
import re
import sys
import types
from dataclasses import make_dataclass
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyzero.distributed import iter_full_weights
from tinyzero.models import load_policy
from tinyzero.models.tiny import build_tiny_model
from tinyzero.rollout import SamplingParams
from tinyzero.rollout.vllm import VLLMEngine
from tinyzero.train.rollout_callback import RolloutCallback

EOS = 0

# Copied from the vllm-0.33.0 wheel. LLM.__init__ (vllm/entrypoints/llm.py): `model`, then these
# keyword-only parameters, then **kwargs that go to EngineArgs.
LLM_KEYWORDS = set(
    """runner convert tokenizer tokenizer_mode skip_tokenizer_init trust_remote_code allowed_local_media_path
    allowed_media_domains tensor_parallel_size dtype quantization revision tokenizer_revision chat_template seed
    gpu_memory_utilization cpu_offload_gb offload_group_size offload_num_in_group offload_prefetch_step
    offload_params enforce_eager enable_return_routed_experts return_sampling_mask disable_custom_all_reduce
    hf_token hf_overrides mm_processor_kwargs pooler_config structured_outputs_config profiler_config
    attention_config kv_cache_memory_bytes compilation_config quantization_config logits_processors spec_method
    spec_model spec_tokens""".split()
)
# EngineArgs fields (vllm/engine/arg_utils.py) this project passes through LLM's **kwargs
ENGINE_ARGS = {
    "distributed_executor_backend",
    "enable_sleep_mode",
    "generation_config",
    "max_model_len",
    "max_num_seqs",
    "sleep_mode_offload_cudagraph",
}
# SamplingParams (vllm/sampling_params.py, a msgspec Struct): its public fields in order
VLLMSamplingParams = make_dataclass(
    "SamplingParams",
    [
        (name, object, None)
        for name in """n presence_penalty frequency_penalty repetition_penalty temperature watermarking top_p top_k
        min_p seed stop stop_token_ids ignore_eos max_tokens min_tokens logprobs prompt_logprobs
        prompt_logprob_token_ids prompt_logprob_start logprob_token_ids flat_logprobs detokenize skip_special_tokens
        spaces_between_special_tokens include_stop_str_in_output output_kind stream_interval skip_clone
        output_text_buffer_length structured_outputs logit_bias allowed_token_ids extra_args bad_words
        skip_reading_prefix_cache thinking_token_budget repetition_detection routed_experts_prompt_start
        trace_decode_token_ids""".split()
    ],
)
# TokensPrompt (vllm/inputs/llm.py) is a TypedDict: keywords only, prompt_token_ids required
TOKENS_PROMPT_KEYS = {
    "prompt_token_ids",
    "prompt",
    "token_type_ids",
    "prompt_token_offsets",
    "multi_modal_data",
    "media_io_kwargs",
    "mm_processor_kwargs",
    "multi_modal_uuids",
    "cache_salt",
}
# Qwen2Model.hf_to_vllm_mapper (vllm/model_executor/models/qwen2.py): checkpoint names onto fused parameters
FUSED = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}


def TokensPrompt(**keys):
    assert "prompt_token_ids" in keys and set(keys) <= TOKENS_PROMPT_KEYS, keys
    return keys


def vllm_name(name: str) -> str:
    return ".".join(FUSED.get(part, part) for part in name.split("."))


class StandInQwen2:
    """vLLM's Qwen2ForCausalLM as the engine sees it: fused q/k/v and gate/up parameters, the
    head tied to the embedding when the config says so (so `named_parameters` lists it once),
    and `load_weights` returning what it loaded, skipping a tied `lm_head.weight` as
    vLLM's AutoWeightsLoader does."""

    def __init__(self, path: str):
        self.tied = json.loads(open(f"{path}/config.json").read())["tie_word_embeddings"]
        names = {vllm_name(name) for name in load_file(f"{path}/model.safetensors")}
        if self.tied:
            names.discard("lm_head.weight")
        self.params = {name: torch.zeros(1, dtype=torch.bfloat16) for name in sorted(names)}

    def parameters(self):
        return iter(self.params.values())

    def named_parameters(self):
        return iter(self.params.items())

    def load_weights(self, weights) -> set[str]:
        loaded = set()
        for name, tensor in weights:
            assert tensor.dtype == torch.bfloat16
            if not (self.tied and name == "lm_head.weight"):
                loaded.add(vllm_name(name))
        return loaded


class LLM:
    """vLLM 0.33's `LLM` as far as the engine uses it, with its methods' signatures; every call
    goes to `calls`. Building it sets torch's matmul precision and threads, as vLLM's GPU worker does."""

    def __init__(self, model: str, **kwargs):
        unknown = set(kwargs) - LLM_KEYWORDS - ENGINE_ARGS
        assert not unknown, f"not keywords of vLLM 0.33's LLM: {unknown}"
        self.kwargs, self.calls, self.asleep = kwargs, [("init",)], set()
        self.model = StandInQwen2(model)
        torch.set_float32_matmul_precision("highest")
        torch.set_num_threads(1)

    def sleep(self, level: int = 1, mode: str = "abort"):
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags)))
        self.asleep -= set(tags)
        return not self.asleep

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def apply_model(self, func):
        assert "weights" not in self.asleep
        self.calls.append(("apply_model",))
        return [func(self.model)]

    def generate(
        self,
        prompts,
        sampling_params=None,
        *,
        use_tqdm=True,
        lora_request=None,
        priority=None,
        tokenization_kwargs=None,
        mm_processor_kwargs=None,
    ):
        assert not self.asleep and len(prompts) == len(sampling_params)
        self.calls.append(("generate", sampling_params, use_tqdm))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            completions = []
            for j in range(params.n):
                ids = [prompt["prompt_token_ids"][-1] + j + 1, EOS]
                logprobs = None if params.logprobs is None else [{t: SimpleNamespace(logprob=-1.0)} for t in ids]
                completions.append(SimpleNamespace(token_ids=ids, logprobs=logprobs))
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs


@pytest.fixture
def vllm(monkeypatch):
    """The stand-in as `vllm` and `vllm.inputs`; the launcher's variables and torch's settings
    are as they were after each test."""
    module, inputs = types.ModuleType("vllm"), types.ModuleType("vllm.inputs")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # found by importlib.util.find_spec
    module.LLM, module.SamplingParams, inputs.TokensPrompt = LLM, VLLMSamplingParams, TokensPrompt
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    yield module
    torch.set_float32_matmul_precision(precision)
    torch.set_num_threads(threads)


def save_model(path, tied: bool, store_head: bool = False):
    """A tiny Qwen2; `store_head` keeps a tied model's `lm_head.weight` in the file, as some checkpoints do."""
    build_tiny_model(
        50, EOS, hidden_size=32, num_layers=2, intermediate_size=64, tie_word_embeddings=tied
    ).save_pretrained(path)
    if store_head:
        weights = load_file(f"{path}/model.safetensors")
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        save_file(weights, f"{path}/model.safetensors", metadata={"format": "pt"})
    return str(path)


def rollout_step(path, rank: int = 0, step: int = 0, prompts=((5, 6), (7,)), n: int = 2, sleep_level: int = 1):
    """One training step's phase cycle as the rollout callback runs it, on the CPU."""
    callback = RolloutCallback(
        lambda **kwargs: VLLMEngine(path, EOS, EOS, sleep_level=sleep_level, **kwargs), SamplingParams(n=n, seed=3)
    )
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=rank, world_size=2)
    callback.setup(trainer, None, "fit")
    module = SimpleNamespace(policy=load_policy(path), rl_step=step, device=torch.device("cpu"))
    batch = {"prompt_ids": [list(p) for p in prompts]}
    callback.on_train_batch_start(trainer, module, batch, 0)
    return callback.engine.llm, batch["rollouts"]


def test_engine_calls_vllm_by_its_keywords_in_phase_order(vllm, tmp_path):
    llm, rollouts = rollout_step(save_model(tmp_path / "m", tied=True))
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["sleep_mode_offload_cudagraph"]
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher" and "logprobs_mode" not in llm.kwargs
    names = [call[0] for call in llm.calls]
    assert names == ["init", "sleep", "wake_up", "apply_model", "reset_prefix_cache", "wake_up", "generate", "sleep"]
    assert llm.calls[2][1] == ("weights",) and llm.calls[5][1] == ("kv_cache",)
    _, params, use_tqdm = llm.calls[6]
    assert use_tqdm is False
    assert all(p.logprobs is None and p.detokenize is False and p.stop_token_ids == [EOS] for p in params)
    assert rollouts.prompt_index == [0, 0, 1, 1] and rollouts.response_ids[2] == [8, EOS]


def test_level_2_refuses_a_push_that_leaves_a_parameter_out(vllm, tmp_path):
    path = save_model(tmp_path / "m", tied=False)
    weights = list(iter_full_weights(load_policy(path)))
    kept = [(name, w) for name, w in weights if not name.startswith(("model.layers.1.mlp.", "lm_head."))]
    engines = {level: VLLMEngine(path, EOS, EOS, "cpu", sleep_level=level) for level in (1, 2)}
    for engine in engines.values():
        engine.wake_up(["weights"])
        engine.load_weights(weights)
    engines[1].load_weights(kept)  # level 1: the CPU copy holds what was not pushed
    missing = "['lm_head.weight', 'model.layers.1.mlp.down_proj.weight', 'model.layers.1.mlp.gate_up_proj.weight']"
    with pytest.raises(RuntimeError, match=rf"sleep_level=2 .* left out {re.escape(missing)}: push every"):
        engines[2].load_weights(kept)


def test_level_2_accepts_a_tied_checkpoint_that_stores_lm_head(vllm, tmp_path):
    path = save_model(tmp_path / "m", tied=True, store_head=True)
    assert "lm_head.weight" in load_file(f"{path}/model.safetensors")
    rollout_step(path, sleep_level=2)  # the policy pushes the embedding once; vLLM's head is that parameter


def test_seeds_never_repeat_across_steps_ranks_and_samples(vllm, tmp_path):
    path = save_model(tmp_path / "m", tied=True)
    prompts, n = [(i,) for i in range(1000)], 8  # 8000 samples per rank and step: past the old 7919 spacing
    seeds = []
    for step in range(2):
        for rank in range(2):
            llm, _ = rollout_step(path, rank, step, prompts, n)
            seeds += [p.seed + j for p in llm.calls[6][1] for j in range(p.n)]  # vLLM seeds sample j with seed + j
    assert len(seeds) == 2 * 2 * 1000 * n == len(set(seeds))
    assert max(seeds) < 2**63  # vLLM's sampler keeps seeds in int64


def test_local_rank_must_be_the_trainer_device(vllm, monkeypatch, tmp_path):
    path = save_model(tmp_path / "m", tied=True)
    monkeypatch.setenv("LOCAL_RANK", "0")  # Lightning's launcher for trainer.devices=[2, 3]
    with pytest.raises(ValueError, match=r"cuda:0 \(LOCAL_RANK=0\), but the rank trains on cuda:2: .*CUDA_VISIBLE"):
        VLLMEngine(path, EOS, EOS, "cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    VLLMEngine(path, EOS, EOS, "cuda:1")
    monkeypatch.delenv("LOCAL_RANK")  # a one-process run: the trainer's device is taken
    VLLMEngine(path, EOS, EOS, "cuda:2")
    assert os.environ["LOCAL_RANK"] == "2"


def test_building_the_engine_keeps_torch_settings(vllm, tmp_path):
    torch.set_float32_matmul_precision("high")
    torch.set_num_threads(2)
    VLLMEngine(save_model(tmp_path / "m", tied=True), EOS, EOS, "cpu")
    assert torch.get_float32_matmul_precision() == "high" and torch.get_num_threads() == 2


def test_a_sweep_trains_each_vllm_job_in_a_fresh_process_and_refuses_a_parallel_launcher(vllm):
    """vLLM allows one engine per process: a sweep's job whose engine resolves to vLLM (on CUDA) trains in a
    process of its own; a launcher that may run such jobs side by side is refused, naming the ones to use."""
    from hydra import compose, initialize_config_dir

    from tinyzero.analysis.sweep import IN_PROCESS, check_launcher, job_process

    def process(*overrides, device="cuda"):
        conf = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "conf")
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            return job_process(compose("train", overrides=["experiment=countdown_tiny", *overrides]), device)

    assert process("rollout.engine.kind=vllm") == process("rollout.engine.kind=auto") == "fresh"
    assert process("rollout.engine.kind=auto", device="cpu") == process("rollout.engine.kind=compiled") == "same"
    assert process("rollout.engine.kind=vllm", "sweep_job_process=same") == "same"  # the user's choice
    assert process("rollout.engine.kind=hf", "sweep_job_process=fresh") == "fresh"
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    with pytest.raises(ValueError, match=re.escape("use hydra/launcher=basic (the default) or hydra/launcher=sub")):
        check_launcher(joblib, "fresh")
    check_launcher(joblib, "same")
    check_launcher(IN_PROCESS, "fresh")
    check_launcher("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "fresh")
