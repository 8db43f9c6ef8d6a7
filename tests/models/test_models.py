import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinyzero.models import load_critic, load_policy, load_tokenizer
from tinyzero.models.tiny import build_tokenizer
from tinyzero.tasks import CountdownTask, MultiplicationTask, render_prompt


def task_texts():
    texts = []
    for task in (CountdownTask(min_count=2, max_count=4), MultiplicationTask(digits_a=4, digits_b=5)):
        for row in task.generate(50, seed=11):
            for template in ("base", "qwen-instruct", "plain"):
                texts.append(render_prompt(task.question(row), template))
    answers = ["<answer> (12 + 345) / 6 - 7890 </answer>", " <answer>1554</answer>", "123", " 4567\n\n89"]
    return texts + answers


def test_reloaded_tokenizer_gives_the_built_ids(tiny_dir, tmp_path):
    # The loader may swap the class (Qwen2Tokenizer when config.json says qwen2): ids must not change.
    corpus = task_texts()
    built = build_tokenizer(corpus[:200])
    built.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in corpus:
        assert loaded(text)["input_ids"] == built(text)["input_ids"], text
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.eos_token_id == built.eos_token_id
    # single digits, as Qwen2's tokenizer: 123 is three tokens
    assert len(loaded("123")["input_ids"]) == 3
    # the tags are single tokens
    assert len(loaded("<answer>")["input_ids"]) == 1


def test_tiny_model_loads_through_from_pretrained(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    tokenizer = load_tokenizer(str(tiny_dir))
    policy = load_policy(str(tiny_dir))
    same = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([tokenizer("User: 12 + 3")["input_ids"]])
    torch.testing.assert_close(policy(ids).logits, same(ids).logits)
    assert policy.config.vocab_size >= len(tokenizer)


def test_critic_from_causal_checkpoint_shares_the_backbone(tiny_dir, tmp_path):
    policy = load_policy(str(tiny_dir))
    critic = load_critic(str(tiny_dir))
    for name, param in policy.model.named_parameters():
        torch.testing.assert_close(critic.model.get_parameter(name), param)
    ids = torch.tensor([[5, 6, 7, 8]])
    values = critic(ids).logits
    assert values.shape == (1, 4, 1)
    critic.train()  # no dropout on the value head: train mode gives the same values
    torch.testing.assert_close(critic(ids).logits, values)
    critic.save_pretrained(tmp_path)
    torch.testing.assert_close(load_critic(str(tmp_path))(ids).logits, values)
