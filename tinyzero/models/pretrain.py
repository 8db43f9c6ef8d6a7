"""The CPU demo's base model: a tiny Qwen2 pre-trained on target-free task text.

The corpus is prompts followed by well-formed answers that ignore the target, so the base
model learns the format and the vocabulary of equations but not how to solve: what it
learns about reaching the target, it learns from the reward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinyzero.data.sources import problem_key
from tinyzero.errors import ConfigError
from tinyzero.models.loading import load_tokenizer
from tinyzero.models.tiny import build_tiny_model, build_tokenizer
from tinyzero.tasks import TEMPLATES, render_prompt

log = logging.getLogger(__name__)


def pretraining_texts(
    task, template: str, num_texts: int, seed: int, facts_share: float = 0.1, held_out: list[dict] = ()
) -> list[str]:
    """Prompts followed by well-formed answers that ignore the target: the format, never a
    solution; plus, repeated to `facts_share` of the corpus, the task's `known_facts` (e.g. the
    multiplication task's times table), which are not problems the task asks. No problem of
    `held_out` (the test rows) is among the prompts."""
    if not 0 <= facts_share < 1:
        raise ConfigError(f"model.pretrain.facts_share={facts_share} must be in [0, 1)")
    rng = random.Random(seed)
    facts = task.known_facts()
    wanted = num_texts - (round(facts_share * num_texts) if facts else 0)
    excluded = {problem_key(row) for row in held_out}
    rows, round_ = [], 0
    while len(rows) < wanted:
        rows += [r for r in task.generate(wanted, seed=seed + 7919 * (round_ + 1)) if problem_key(r) not in excluded]
        round_ += 1
    rows = rows[:wanted]
    texts = [f"{render_prompt(task.question(r), template)} {task.random_response(r, rng)}" for r in rows]
    for i in range(num_texts - len(texts)):
        row, response = facts[i % len(facts)]
        texts.append(f"{render_prompt(task.question(row), template)} {response}")
    return texts


def pretrain(
    model: torch.nn.Module,
    token_ids: list[list[int]],
    pad_token_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Next-token prediction on `token_ids`, AdamW with warmup and cosine decay; returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    progress = tqdm(range(steps), desc="pre-training the tiny base model", unit="step")
    for _ in progress:
        rows = [token_ids[i] for i in torch.randint(len(token_ids), (batch_size,), generator=gen).tolist()]
        width = max(map(len, rows))
        input_ids = torch.full((batch_size, width), pad_token_id)
        mask = torch.zeros_like(input_ids)
        for r, ids in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        # rows are padded on the right: under causal attention no token attends to a later pad,
        # so no mask is needed, and attention takes its unmasked causal path (4 % of a step on CPU)
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def ensure_tiny_base(
    path: str | Path,
    task,
    template: str,
    num_texts: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    vocab_size: int,
    model: dict,
    facts_share: float,
    held_out: list[dict] = (),
) -> Path:
    """Build, pre-train and save the tiny base model at `path` unless it is already there,
    made by the same task, template and settings (recorded in `pretrain_spec.json`); its text
    holds no problem of `held_out`."""
    path = Path(path)
    texts = pretraining_texts(task, template, num_texts, seed, facts_share, held_out)
    # The corpus itself is part of the spec: a change to how texts are made rebuilds the model.
    corpus_hash = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    spec = json.dumps(
        {
            "corpus": corpus_hash,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "vocab_size": vocab_size,
            "model": model,
        },
        sort_keys=True,
    )
    spec_path = path / "pretrain_spec.json"
    if (path / "config.json").exists() and spec_path.exists() and spec_path.read_text() == spec:
        return path
    start = time.perf_counter()
    # Every template's words in the vocabulary, so any template tokenizes compactly.
    tokenizer_corpus = texts + [
        t.format(question=task.question(r)) for r in task.generate(50, seed) for t in TEMPLATES.values()
    ]
    tokenizer = build_tokenizer(tokenizer_corpus, vocab_size)
    torch.manual_seed(seed)
    net = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=seed, **model)
    token_ids = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    losses = pretrain(net, token_ids, tokenizer.pad_token_id, steps, batch_size, lr, seed)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretrain_loss.txt").write_text("\n".join(f"{x:.4f}" for x in losses))
    (tmp / "pretrain_spec.json").write_text(spec)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    log.info("tiny base model saved to %s (%.0f s, final loss %.3f)", path, time.perf_counter() - start, losses[-1])
    assert load_tokenizer(str(path)).eos_token_id == tokenizer.eos_token_id
    return path
