import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

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
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", corpus, hidden_size=64, num_layers=2, intermediate_size=128)
