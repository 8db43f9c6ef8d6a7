"""Every key of the composed training config: its type, the values it may take, and what it means.

`build.validate` checks each value against its entry before anything loads (`kinds.check_values`), then the
rules across keys; a choice's names are those of the registry or table the code looks the value up in.
tests/test_schema.py fails on a key of a recipe or group option without an entry, and on an entry of no key.
trainer, logger, callbacks and task keys are arguments of the classes they build, which check them further.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tinyzero.analysis.sweep import JOB_PROCESSES
from tinyzero.data.datamodule import OVERLONG_PROMPTS
from tinyzero.errors import ConfigError
from tinyzero.kernels.backend import BACKENDS
from tinyzero.models.attention import ATTENTION_CHOICES
from tinyzero.models.loading import DTYPES
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.ppo.kl_control import KL_CONTROLLERS
from tinyzero.ppo.losses import KL_ESTIMATORS, LOSS_AGG_MODES
from tinyzero.rollout.select import ENGINE_KINDS
from tinyzero.rollout.vllm import SLEEP_LEVELS
from tinyzero.tasks import TEMPLATES
from tinyzero.train.kinds import FLAG, INT, NUMBER, TEXT, Count, Free, Key, Names, Number, OneOf, Section, Text, section

POSITIVE = Count(1)
STEPS = Count(0)  # 0: never
FRACTION = Number(0, 1)
TARGET = (TEXT, "the class or function Hydra builds")
COUNTDOWN, MULTIPLICATION = "task=countdown, countdown_easy", "task=multiplication, multiplication_tiny"
PRETRAINED, QWEN, FSDP2 = "model=tiny", "model=qwen2.5-1.5b, qwen2.5-3b", "trainer=fsdp, fsdp_cpu"
ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
ARCHITECTURE += ("num_key_value_heads", "tie_word_embeddings")

TOP = section(
    "",
    {
        "run_name": (TEXT, "names the run's folder outputs/runs/<run_name>/<time>/ and its sweep's"),
        "seed": (STEPS, "the run's seed: initial weights, data order and (rollout.seed) sampling"),
        "ckpt_path": (Text(nullable=True), "resume from a step_K.ckpt, or last: the newest good one; null: start"),
        "gpu_memory_gib": (Number(0, low_open=True, nullable=True), "the memory plan's GiB per GPU; null: its total"),
        "host_memory_gib": (
            Number(0, low_open=True, nullable=True),
            "the plan's host memory per node (offload, the sleeping engine); null: this machine's",
        ),
        "sweep_job_process": (OneOf(JOB_PROCESSES), "a -m sweep's job trains in a fresh process | the same | auto"),
    },
)
TASK = section(  # checked further by the task's constructor; `build.check_task_keys` refuses foreign keys
    "task.",
    {
        "_target_": TARGET,
        "name": (TEXT, "the task's name: data/<name>, run_name and model.pretrain.task"),
        "question": (TEXT, "full | short: the prompt's wording"),
        "format_score": (NUMBER, "the reward of a well-formed wrong answer"),
        "min_count": (INT, "fewest numbers in a problem (>= 2)", COUNTDOWN),
        "max_count": (INT, "most numbers in a problem (>= task.min_count)", COUNTDOWN),
        "min_number": (INT, "smallest number drawn", COUNTDOWN),
        "max_number": (INT, "largest number drawn", COUNTDOWN),
        "max_target": (INT, "largest target", COUNTDOWN),
        "operations": (TEXT, "the operations allowed: a non-empty subset of +-*/", COUNTDOWN),
        "answer_scope": (TEXT, "anywhere: the last complete <answer> | last_line: only on the last line", COUNTDOWN),
        "digits_a": (INT, "digits of the first factor (>= 1)", MULTIPLICATION),
        "digits_b": (INT, "digits of the second factor (>= 1)", MULTIPLICATION),
        "pretrain_format": (TEXT, "the tiny base's text: answer | worked (multiplication); answer | search | single"),
        "continue_prob": (FRACTION, "search text: the chance of another attempt after each one", COUNTDOWN),
        "max_attempts": (POSITIVE, "search text: most attempts in one response", COUNTDOWN),
        "answered_attempt": (TEXT, "search text: the attempt answered, last | random (never the hit)", COUNTDOWN),
        "behaviours": (Free("a list of names: phrases, equations, checks"), "the behaviour/* metrics logged"),
        "times_table": (FLAG, "worked only: also pre-train on the 100 single-digit products", MULTIPLICATION),
    },
)
DATA = section(
    "data.",
    {
        "source": (TEXT, "generate (the task's generator), a `datasets` hub name or a folder of parquet files"),
        "dir": (TEXT, "where the train / test parquet files are written and read"),
        "train_size": (POSITIVE, "training problems"),
        "test_size": (POSITIVE, "held-out problems, evaluated greedily"),
        "seed": (STEPS, "the generator's and the data order's seed"),
        "template": (OneOf(TEMPLATES), "how a question becomes a prompt"),
        "max_prompt_length": (POSITIVE, "tokens a prompt may have"),
        "overlong_prompts": (OneOf(OVERLONG_PROMPTS), "prompts over max_prompt_length: drop, truncate or error"),
        "train_batch_size": (POSITIVE, "prompts per RL step, all ranks together"),
        "epochs": (POSITIVE, "passes over the training problems"),
        "max_steps": (Count(1, None, "null (data.epochs decide)"), "a cap on RL steps"),
    },
)
MODEL = section(
    "model.",
    {
        "path": (TEXT, "the base model: a hub name or a folder (the tiny base is pre-trained there when missing)"),
        "critic_path": (TEXT, "the critic's initial weights (its value head starts fresh)"),
        "dtype": (OneOf(DTYPES), "the dtype the models load in"),
        "attn_implementation": (OneOf(ATTENTION_CHOICES), "attention kernel; auto: the fastest usable here"),
        "gradient_checkpointing": (FLAG, "recompute activations in the backward pass"),
        "autocast_bf16": (FLAG, "compute in bfloat16 under autocast"),
        "share_prompt_forward": (FLAG, "each distinct prompt of a micro-batch runs once in the log-prob passes"),
        "lora.rank": (STEPS, "LoRA's rank r for the policy and the critic (peft); 0: full-parameter training"),
        "lora.alpha": (Number(0), "LoRA's scale numerator: the update is (alpha / rank) * B @ A"),
        "lora.dropout": (FRACTION, "dropout on LoRA's input"),
        "lora.target_modules": (Names(), "the linear layers that get adapters (the head and embeddings never do)"),
        "pretrain": (Section(), "null: a downloaded base; else how the tiny base is pre-trained (below)"),
        "pretrain.task": (Text(nullable=True), "the task these settings are made for (a guard on task=)", PRETRAINED),
        "pretrain.num_texts": (POSITIVE, "pre-training texts", PRETRAINED),
        "pretrain.facts_share": (NUMBER, "of the texts, the task's known facts (in [0, 1))", PRETRAINED),
        "pretrain.hold_out_test": (FLAG, "leave the held-out problems out of the pre-training text", PRETRAINED),
        "pretrain.steps": (STEPS, "optimizer steps", PRETRAINED),
        "pretrain.batch_size": (POSITIVE, "texts per step", PRETRAINED),
        "pretrain.lr": (Number(0), "learning rate", PRETRAINED),
        "pretrain.seed": (STEPS, "the texts' and the initial weights' seed", PRETRAINED),
        "pretrain.vocab_size": (POSITIVE, "the tokenizer's vocabulary, trained on the texts", PRETRAINED),
        "pretrain.model.hidden_size": (POSITIVE, "the tiny Qwen2's width", PRETRAINED),
        "pretrain.model.num_layers": (POSITIVE, "its layers", PRETRAINED),
        "pretrain.model.num_heads": (POSITIVE, "its attention heads", PRETRAINED),
        "pretrain.model.num_kv_heads": (POSITIVE, "its key / value heads", PRETRAINED),
        "pretrain.model.intermediate_size": (POSITIVE, "its MLP width", PRETRAINED),
        "pretrain.model.max_position_embeddings": (POSITIVE, "its longest sequence", PRETRAINED),
    }
    | {  # config.json's shape, for the memory plan without a download
        f"architecture.{name}": (FLAG if name.startswith("tie") else POSITIVE, f"config.json's {name}", QWEN)
        for name in ARCHITECTURE
    },
)
ALGORITHM = section(
    "algorithm.",
    {
        "name": (TEXT, "a label: run_name is <task.name>_<algorithm.name>"),
        "adv_estimator": (OneOf(ADVANTAGE_ESTIMATORS), "gae: a critic's values | grpo: group-normalised scores"),
        "gamma": (FRACTION, "GAE's discount γ"),
        "lam": (FRACTION, "GAE's λ"),
        "norm_adv_by_std": (FLAG, "grpo: divide by the group's standard deviation"),
        "kl_coef": (Number(0), "β of the KL penalty in the reward (0 turns it off)"),
        "kl_ctrl": (OneOf(KL_CONTROLLERS), "β fixed, or adapted toward algorithm.target_kl"),
        "target_kl": (Number(0, low_open=True), "adaptive: the KL that β is adapted toward"),
        "kl_horizon": (POSITIVE, "adaptive: the sequences over which β adapts"),
        "kl_penalty": (OneOf(KL_ESTIMATORS), "the KL estimator in the reward"),
        "use_kl_loss": (FLAG, "the KL as a loss term (weighted by kl_loss_coef) instead of in the reward"),
        "kl_loss_coef": (Number(0), "weight of the KL loss term"),
        "kl_loss_type": (OneOf(KL_ESTIMATORS), "the KL estimator of the loss term"),
        "clip_ratio_low": (Number(0), "PPO's ε below: ρ >= 1 − ε_low"),
        "clip_ratio_high": (Number(0), "PPO's ε above: ρ <= 1 + ε_high"),
        "clip_ratio_c": (Number(1, low_open=True, nullable=True), "dual-clip constant c; null: off"),
        "clip_range_value": (Number(0), "how far a value may move from its old one in the value loss"),
        "loss_agg_mode": (OneOf(LOSS_AGG_MODES), "how per-token losses become one (tinyzero/ppo/losses.py)"),
        "entropy_coeff": (Number(0), "weight of the entropy bonus"),
        "ppo_epochs": (POSITIVE, "passes over each step's rollouts"),
        "ppo_mini_batch_size": (POSITIVE, "prompts per optimizer step (× rollout.n sequences)"),
        "ppo_micro_batch_size": (POSITIVE, "sequences per forward / backward"),
        "ppo_max_token_len_per_micro_batch": (Count(1, None, "null"), "tokens per forward / backward instead"),
        "log_prob_micro_batch_size": (POSITIVE, "sequences per forward of the log-prob and value passes"),
        "critic_warmup": (STEPS, "the actor updates from this RL step on (1-based)"),
        "actor_lr": (Number(0), "the policy's learning rate"),
        "critic_lr": (Number(0), "the critic's learning rate"),
        "lr_warmup_steps": (STEPS, "optimizer steps of linear warm-up"),
        "weight_decay": (Number(0), "AdamW's weight decay"),
        "grad_clip": (Number(0), "the gradient norm's clip"),
        "nonfinite_abort_after": (STEPS, "updates in a row with a non-finite loss or gradient that abort (0: never)"),
    },
)
ROLLOUT = section(
    "rollout.",
    {
        "engine._target_": TARGET,
        "engine._partial_": (FLAG, "the engine is built later, once the ranks exist"),
        "engine.kind": (OneOf(ENGINE_KINDS), "auto: vLLM, compiled or transformers' generate, as they can run"),
        "engine.hf.max_batch_size": (POSITIVE, "sequences generated at once"),
        "engine.hf.pin_memory": (FLAG, "sleeping weights in pinned host buffers allocated once (CUDA)"),
        "engine.vllm.gpu_memory_utilization": (Number(0, 1, low_open=True), "the GPU share vLLM takes on waking"),
        "engine.vllm.enforce_eager": (FLAG, "no CUDA graphs: a quicker start, slower decoding"),
        "engine.vllm.max_num_seqs": (POSITIVE, "sequences decoded at once"),
        "engine.vllm.tensor_parallel_size": (POSITIVE, "GPUs per engine"),
        "engine.vllm.sleep_level": (OneOf(SLEEP_LEVELS), "2: the weights are dropped while asleep"),
        "engine.compiled.max_batch_size": (POSITIVE, "sequences decoded at once: the static KV cache's rows"),
        "engine.compiled.cuda_graphs": (FLAG, "decode with CUDA graphs (on CPU it never does)"),
        "engine.compiled.pin_memory": (FLAG, "sleeping weights in pinned host buffers allocated once (CUDA)"),
        "engine.compiled.keep_graphs": (FLAG, "weights, cache and CUDA graphs stay on the GPU while asleep"),
        "n": (POSITIVE, "responses per prompt"),
        "temperature": (Number(0), "sampling temperature; 0: greedy"),
        "top_p": (Number(0, 1, low_open=True), "nucleus sampling's p"),
        "max_new_tokens": (POSITIVE, "tokens a response may have"),
        "seed": (STEPS, "the sampling seeds' base"),
        "dtype": (OneOf(DTYPES), "the dtype of the engine's copy of the weights"),
    },
)
KERNELS = section(
    "kernels.",
    {
        "backend": (OneOf(BACKENDS), "log-prob, entropy and GAE: auto (Triton on CUDA), torch or triton"),
        "fused_lm_head": (FLAG, "lm_head fused with the log-prob, chunked over tokens: no [tokens, vocab] logits"),
        "chunk_tokens": (Count(1, "auto", "'auto'"), "tokens per chunk of the fused head; auto: 512 MiB of logits"),
    },
)
FSDP = section(
    "fsdp.",
    {
        "param_dtype": (OneOf((None, *DTYPES)), "compute and all-gather dtype; null: model.dtype"),
        "reduce_dtype": (OneOf(DTYPES), "gradient reduce-scatter dtype when param_dtype is set"),
        "offload_reference": (FLAG, "the reference's shards live on CPU (CUDA only)"),
        "offload_optimizer": (FLAG, "shards, gradients and Adam states on CPU, the step there (CUDA only)"),
    },
)
CALLBACKS = section(
    "callbacks.",
    {
        "rollout._target_": TARGET,
        "rollout.eval_every_n_steps": (STEPS, "RL steps between greedy evaluations on the test set"),
        "rollout.eval_max_new_tokens": (Count(1, None, "null (rollout.max_new_tokens)"), "an evaluation's tokens"),
        "rollout.print_samples_every_n_steps": (STEPS, "RL steps between printed samples"),
        "rollout.num_samples_printed": (STEPS, "responses printed each time"),
        "rollout.dump_rollouts": (FLAG, "every step's responses to rollouts/step_K_rank_R.jsonl"),
        "rollout.dump_dir": (TEXT, "the folder of rollouts/"),
        "checkpoint._target_": TARGET,
        "checkpoint.dirpath": (TEXT, "where step_K.ckpt are saved"),
        "checkpoint.every_n_steps": (STEPS, "RL steps between checkpoints (and one at the end)"),
        "checkpoint.save_hf": (FLAG, "also export the policy and critic as Hugging Face folders"),
        "checkpoint.keep_last": (Count(1, None, "null (keep all)"), "only the newest N checkpoints are kept"),
        "stop_on_signal._target_": TARGET,
        "stop_on_signal.signals": (Free("a list of signal names"), "finish the step, save and exit 0 on these"),
        "progress_bar._target_": TARGET,
        "progress_bar.refresh_rate": (STEPS, "RL steps between redraws"),
    },
)
LOGGER = section(
    "logger.",
    {
        "csv._target_": (*TARGET, "logger=csv"),
        "csv.save_dir": (TEXT, "metrics.csv's folder", "logger=csv"),
        "wandb._target_": (*TARGET, "logger=wandb"),
        "wandb.project": (TEXT, "the W&B project", "logger=wandb"),
        "wandb.name": (TEXT, "the run's name", "logger=wandb"),
        "wandb.group": (TEXT, "a sweep's jobs share it", "logger=wandb"),
        "wandb.save_dir": (TEXT, "the offline run's folder", "logger=wandb"),
        "wandb.offline": (FLAG, "log offline (wandb sync later)", "logger=wandb"),
    },
)
TRAINER = section(  # lightning.Trainer's arguments
    "trainer.",
    {
        "_target_": TARGET,
        "accelerator": (TEXT, "cpu | gpu | cuda | auto"),
        "devices": (Free("an integer, a list of device ids or 'auto'"), "devices per node"),
        "num_nodes": (POSITIVE, "nodes"),
        "strategy": (Free("a strategy name, or a _target_ and its arguments"), "how the ranks share the models"),
        "precision": (Free("Lightning's precision, e.g. 32-true"), "Lightning's precision (the models' is model.*)"),
        "max_epochs": (INT, "1: one epoch is the whole run (data.epochs × its steps)"),
        "log_every_n_steps": (POSITIVE, "Lightning's logging interval"),
        "num_sanity_val_steps": (INT, "0: no validation loop (evaluation is the rollout callback's)"),
        "limit_val_batches": (NUMBER, "0: no validation loop"),
        "use_distributed_sampler": (FLAG, "false: the data module splits prompts across ranks itself"),
        "enable_model_summary": (FLAG, "print Lightning's model summary"),
        "enable_checkpointing": (FLAG, "false: callbacks.checkpoint saves, by RL step"),
        "default_root_dir": (TEXT, "Lightning's folder"),
        "strategy._target_": (*TARGET, FSDP2),
        "strategy.data_parallel_size": (POSITIVE, "ranks that shard the models (all of them)", FSDP2),
        "strategy.tensor_parallel_size": (POSITIVE, "tensor-parallel ranks (1)", FSDP2),
        "strategy.save_distributed_checkpoint": (FLAG, "false: one checkpoint file", FSDP2),
        "strategy.process_group_backend": (TEXT, "cuda:nccl,cpu:gloo (GPUs; offloaded shards on gloo) | gloo", FSDP2),
    },
)
PATHS = section(
    "paths.",
    {
        "data_dir": (TEXT, "generated data"),
        "cache_dir": (TEXT, "pre-trained tiny bases"),
        "log_dir": (TEXT, "runs, sweeps and evaluations"),
        "output_dir": (TEXT, "this run's folder (Hydra's)"),
    },
)
SCHEMA: dict[str, Key] = (
    TOP | TASK | DATA | MODEL | ALGORITHM | ROLLOUT | KERNELS | FSDP | CALLBACKS | LOGGER | TRAINER | PATHS
)
# scripts/eval.py's own keys, on top of the training config
EVAL_SCHEMA: dict[str, Key] = section(
    "",
    {
        "checkpoint": (TEXT, "a Hugging Face model folder or a training checkpoint step_K.ckpt"),
        "samples": (POSITIVE, "k of pass@k"),
        "sample_temperature": (Number(0), "the temperature of the k samples; 0: greedy"),
        "output": (TEXT, "the per-problem JSONL"),
    },
)


def check_not_greedy(cfg: DictConfig, n_key: str, temperature_key: str) -> None:
    n, temperature = OmegaConf.select(cfg, n_key), OmegaConf.select(cfg, temperature_key)
    if temperature == 0 and n > 1:
        raise ConfigError(f"greedy sampling ({temperature_key}=0) would give {n_key}={n} identical responses")
