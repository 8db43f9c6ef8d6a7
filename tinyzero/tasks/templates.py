"""Prompt templates: how a task's question is wrapped for the policy."""

from __future__ import annotations

from tinyzero.errors import ConfigError

BASE_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer."
)
INSTRUCT_SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind "
    "and then provides the user with the answer."
)
ASSISTANT_OPENING = "Let me solve this step by step.\n<think>"

TEMPLATES = {
    # TinyZero's template for base models (examples/data_preprocess/countdown.py).
    "base": BASE_SYSTEM + "\nUser: {question}\nAssistant: " + ASSISTANT_OPENING,
    # TinyZero's `qwen-instruct`: the same request inside Qwen's chat markup.
    "qwen-instruct": (
        "<|im_start|>system\n" + INSTRUCT_SYSTEM + "<|im_end|>\n<|im_start|>user\n {question}<|im_end|>\n"
        "<|im_start|>assistant\n" + ASSISTANT_OPENING
    ),
    # The CPU demo: no system text and no <think>, so a tiny model sees short prompts.
    "plain": "User: {question}\nAssistant:",
}


def render_prompt(question: str, template: str) -> str:
    if template not in TEMPLATES:
        raise ConfigError(f"data.template must be one of {sorted(TEMPLATES)}, got {template!r}")
    return TEMPLATES[template].format(question=question)
