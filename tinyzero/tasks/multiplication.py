"""Multiplication: give the product of two integers as a plain integer in `<answer>` tags."""

from __future__ import annotations

import random
import re

from tinyzero.tasks.arith import last_answer

QUESTION = (
    "What is {a} * {b}? Show your work in <think> </think> tags. "
    "And return the final answer in <answer> </answer> tags, for example <answer> 1234 </answer>."
)
SHORT_QUESTION = "What is {a} * {b}?"
_INTEGER = re.compile(r"\s*(-?[0-9]{1,40})\s*", re.ASCII)


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
    ):
        if digits_a < 1 or digits_b < 1:
            raise ValueError(f"task.digits_a and task.digits_b must be >= 1, got {digits_a}, {digits_b}")
        if question not in ("full", "short"):
            raise ValueError(f"task.question must be one of ['full', 'short'], got {question!r}")
        self.digits_a, self.digits_b = digits_a, digits_b
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

    def random_answer(self, row: dict, rng: random.Random) -> str:
        """A number of the product's digit count, unrelated to the factors: pre-training text."""
        digits = len(str(self.ground_truth(row)["product"]))
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
