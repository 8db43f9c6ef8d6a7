import os

# `make test` runs two pytest-xdist workers on two cores: one thread each (torch reads this at import, and
# the scripts a test starts inherit it); with torch's default of one per core the workers' OpenMP threads
# spin against each other (gpu_check's stage f took 31 s beside the demo test, 4 s alone)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Kernels run under Triton's CPU interpreter; it must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Qwen2 model and tokenizer saved with `save_pretrained`."""
    from tinyzero.models.tiny import save_tiny
    from tinyzero.tasks import CountdownTask, MultiplicationTask, render_prompt

    corpus = []
    for task in (CountdownTask(min_count=2, max_count=4), MultiplicationTask()):
        for row in task.generate(100, seed=0):
            for template in ("base", "qwen-instruct", "plain"):
                corpus.append(render_prompt(task.question(row), template) + " <answer> (1 + 2) / 3 </answer>")
    return save_tiny(
        tmp_path_factory.mktemp("tiny") / "model", corpus, hidden_size=64, num_layers=2, intermediate_size=128
    )


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = [
    "experiment=countdown_tiny_ppo",  # the demo runs GRPO; most tests exercise the critic too
    "algorithm=ppo",
    "run_name=test",
    "model.pretrain.steps=10",
    "model.pretrain.num_texts=500",
    "data.train_size=200",
    "data.test_size=16",
    "data.train_batch_size=8",
    "algorithm.ppo_mini_batch_size=4",
    "algorithm.ppo_micro_batch_size=8",
    "rollout.n=2",
    "rollout.max_new_tokens=8",
    "callbacks.rollout.eval_every_n_steps=0",
    "callbacks.rollout.print_samples_every_n_steps=0",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tiny base model (10 pre-training steps) shared by the training tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """Compose the real training config with quick overrides, writing under `tmp_path`."""
    from hydra import compose, initialize_config_dir

    def make(*overrides):
        paths = [f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir}/data", f"paths.output_dir={tmp_path}/run"]
        with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
            return compose(config_name="train", overrides=QUICK + paths + list(overrides))

    return make
