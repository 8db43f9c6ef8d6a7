"""Score a checkpoint on a task's test set: greedy accuracy and pass@k, per-problem JSONL.

`python scripts/eval.py experiment=countdown_tiny checkpoint=PATH [samples=8]`; PATH is a Hugging Face model
folder (`.../checkpoints/hf/step_K/policy`, or any other model's) or a training checkpoint `.../step_K.ckpt`.
"""

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from tinyzero.analysis.evaluate import evaluate_checkpoint
from tinyzero.errors import report_config_error
from tinyzero.train.checkpointing import discard_unused_run_dir
from tinyzero.train.kinds import check_values
from tinyzero.train.schema import EVAL_SCHEMA, SCHEMA, check_not_greedy


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except Exception as err:
        report_config_error(err)
        discard_unused_run_dir(cfg.paths.output_dir, cfg.paths.log_dir)
        raise SystemExit(2) from None


def evaluate(cfg: DictConfig) -> None:
    check_values(cfg, EVAL_SCHEMA | {key: SCHEMA[key] for key in ("rollout.max_new_tokens", "seed")})
    check_not_greedy(cfg, "samples", "sample_temperature")
    result = evaluate_checkpoint(
        cfg.checkpoint,
        instantiate(cfg.task),
        cfg.data,
        cfg.samples,
        cfg.sample_temperature,
        cfg.rollout.max_new_tokens,
        cfg.seed,
        cfg.output,
    )
    print(" ".join(f"{key}={value:.4g}" for key, value in result.items()), f"\nper-problem results: {cfg.output}")


if __name__ == "__main__":
    main()
