"""Multiplication: give the product of two integers as a plain integer in `<answer>` tags."""

from __future__ import annotations

import random
import re

from tinyzero.errors import ConfigError
from tinyzero.tasks.arith import last_answer
from tinyzero.tasks.behaviour import behaviour_metrics, check_behaviour_sets

QUESTION = (
    "What is {a} * {b}? Show your work in <think> </think> tags. "
    "And return the final answer in <answer> </answer> tags, for example <answer> 1234 </answer>."
)
SHORT_QUESTION = "What is {a} * {b}?"
_INTEGER = re.compile(r"\s*(-?[0-9]{1,40})\s*", re.ASCII)
# what the target-free pre-training responses look like (see `MultiplicationTask.random_response`)
PRETRAIN_FORMATS = ("answer", "worked")


def compute_score(solution_str: str, ground_truth: dict, format_score: float = 0.1, score: float = 1.0) -> float:
    """0 without an answer; `score` when the last answer is the integer `ground_truth["product"]`;
    `format_score` for anything else (a wrong number, an expression, text)."""
    answer = last_answer(solution_str)
    if answer is None:
        return 0.0
    match = _INTEGER.fullmatch(answer)
    if match is None:
        return format_score
    return score if int(match.group(1)) == int(ground_truth["product"]) else format_score


class MultiplicationTask:
    """`a * b` with `a` of `digits_a` digits and `b` of `digits_b` digits."""

    columns = {"a": "int", "b": "int"}  # what a data file must hold

    def __init__(
        self,
        name: str = "multiplication",
        digits_a: int = 3,
        digits_b: int = 3,
        question: str = "full",
        format_score: float = 0.1,
        pretrain_format: str = "answer",
        times_table: bool = False,
        behaviours: tuple[str, ...] = ("phrases",),
    ):
        if digits_a < 1 or digits_b < 1:
            raise ConfigError(f"task.digits_a and task.digits_b must be >= 1, got {digits_a}, {digits_b}")
        if question not in ("full", "short"):
            raise ConfigError(f"task.question must be one of ['full', 'short'], got {question!r}")
        if pretrain_format not in PRETRAIN_FORMATS:
            raise ConfigError(f"task.pretrain_format must be one of {list(PRETRAIN_FORMATS)}, got {pretrain_format!r}")
        if pretrain_format == "worked" and digits_b != 1:
            raise ConfigError(f"task.pretrain_format=worked needs task.digits_b=1, got {digits_b}")
        if times_table and (pretrain_format != "worked" or digits_a == 1):
            # with one-digit factors the times table would be the task's own answers
            raise ConfigError("task.times_table needs task.pretrain_format=worked and task.digits_a > 1")
        self.digits_a, self.digits_b = digits_a, digits_b
        self.behaviour_sets = check_behaviour_sets(behaviours)
        self.pretrain_format = pretrain_format
        self.times_table = times_table
        self.question_format = QUESTION if question == "full" else SHORT_QUESTION
        self.format_score = format_score
        self.name = name  # names the data folder: variants of a task keep separate data

    def generate(self, num_problems: int, seed: int) -> list[dict]:
        rng = random.Random(seed)

        def draw(digits: int) -> int:
            return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)

        return [{"a": draw(self.digits_a), "b": draw(self.digits_b)} for _ in range(num_problems)]

    def question(self, row: dict) -> str:
        return self.question_format.format(a=int(row["a"]), b=int(row["b"]))

    def ground_truth(self, row: dict) -> dict:
        return {"product": int(row["a"]) * int(row["b"])}

    def score(self, response: str, ground_truth: dict) -> float:
        return compute_score(response, ground_truth, format_score=self.format_score)

    def behaviours(self, texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
        """`behaviour/*` metrics of the responses `texts` (one ground truth each)."""
        return behaviour_metrics(self.behaviour_sets, texts, ground_truths)

    def known_facts(self) -> list[tuple[dict, str]]:
        """What the base model is taught as knowledge, with true answers: with `times_table`, the
        100 products of two single digits as worked responses (`<think> 7*6=42 </think> <answer>
        42 </answer>`), a problem set this task never asks (its `a` has `digits_a` > 1 digits)."""
        if not self.times_table:
            return []
        return [
            ({"a": a, "b": b}, f"<think> {a}*{b}={a * b} </think> <answer> {a * b} </answer>")
            for a in range(10)
            for b in range(10)
        ]

    def random_response(self, row: dict, rng: random.Random) -> str:
        """A well-formed response that ignores the product: pre-training text, never a solution.

        `answer`: a number of the product's digit count. `worked`: long multiplication of `a` by
        the one-digit `b`, digit by digit from the units, each digit's product a random multiple
        of `b`, then their sum with each shifted to its digit's place, added right; for 47 * 6
        e.g. `<think> 7*6=18, 4*6=30, 300+18=318 </think> <answer> 318 </answer>`. The base model
        learns the procedure and the addition; which multiple of `b` a digit gives (the times
        table, one table for every place) it learns from the reward.
        """
        if self.pretrain_format == "answer":
            digits = len(str(self.ground_truth(row)["product"]))
            return f"<answer> {rng.randint(10 ** (digits - 1), 10**digits - 1)} </answer>"
        b = int(row["b"])
        digits = [int(d) for d in reversed(str(int(row["a"])))]  # units first
        products = [rng.randint(0, 9) * b for _ in digits]
        steps = [f"{d}*{b}={p}" for d, p in zip(digits, products)]
        shifted = [p * 10**place for place, p in enumerate(products)]
        if len(digits) > 1:
            steps.append("+".join(str(p) for p in reversed(shifted)) + f"={sum(shifted)}")
        return f"<think> {', '.join(steps)} </think> <answer> {sum(shifted)} </answer>"
