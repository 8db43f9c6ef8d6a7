"""Countdown: combine the given numbers, each exactly once, with + - * / to reach the target."""

from __future__ import annotations

import random
from fractions import Fraction

from tinyzero.errors import ConfigError
from tinyzero.tasks.arith import UnsafeExpression, evaluate, last_answer, literals, parse_expression

QUESTION = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>."
)
SHORT_QUESTION = "Using the numbers {numbers}, create an equation that equals {target}."
# where the answer is read: the last complete <answer> anywhere, or only on the last line (TinyZero)
ANSWER_SCOPES = ("anywhere", "last_line")


def compute_score(
    solution_str: str,
    ground_truth: dict,
    format_score: float = 0.1,
    score: float = 1.0,
    answer_scope: str = "anywhere",
) -> float:
    """Reward of one response: 0 without an answer, `format_score` for a wrong or invalid
    equation, `score` when it uses each given number exactly once and equals the target.

    `solution_str` is the response text only; `ground_truth = {"target": int, "numbers": list[int]}`.
    The answer is the last complete `<answer>…</answer>` anywhere in the response, or with
    `answer_scope="last_line"` on its last line only, as TinyZero's `countdown.py` reads it (an
    answer followed by a newline and more text scores 0 there).
    """
    if answer_scope == "last_line" and isinstance(solution_str, str):
        solution_str = solution_str.split("\n")[-1]
    equation = last_answer(solution_str)
    if equation is None:
        return 0.0
    try:
        tree = parse_expression(equation)
        if sorted(literals(tree)) != sorted(int(n) for n in ground_truth["numbers"]):
            return format_score
        value = evaluate(tree)
    except (UnsafeExpression, ZeroDivisionError, ArithmeticError):
        return format_score
    return score if abs(value - Fraction(int(ground_truth["target"]))) < Fraction(1, 100000) else format_score


def random_solution(
    numbers: list[int], operations: str, rng: random.Random, non_negative: bool = False
) -> tuple[str, Fraction]:
    """A random left-to-right equation over a random order of `numbers` and its exact value.

    `non_negative` writes each subtraction larger-first, as people do in countdown, so no
    intermediate value drops below zero.
    """
    order = rng.sample(numbers, len(numbers))
    text, value = str(order[0]), Fraction(order[0])
    for number in order[1:]:
        op = rng.choice(operations)
        if op == "/" and number == 0:
            op = "+"
        group = op in "+-" and len(order) > 2
        if op == "-" and non_negative and value < number:
            value = number - value
            text = f"{number} - ({text})" if len(order) > 2 and text != str(order[0]) else f"{number} - {text}"
        else:
            value = {"+": value + number, "-": value - number, "*": value * number, "/": value / number}[op]
            text = f"{text} {op} {number}"
        text = f"({text})" if group else text
    return text, value


class CountdownTask:
    """Problem generator, prompt text and reward for countdown.

    Defaults follow TinyZero's generator (numbers in 1..100, targets in 1..1000, 3–4 numbers);
    every target is built from its numbers, so each problem has a solution.
    """

    columns = {"target": "int", "nums": "list[int]"}  # what a data file must hold

    def __init__(
        self,
        name: str = "countdown",
        min_count: int = 3,
        max_count: int = 4,
        min_number: int = 1,
        max_number: int = 100,
        max_target: int = 1000,
        operations: str = "+-*/",
        question: str = "full",
        format_score: float = 0.1,
        answer_scope: str = "anywhere",
    ):
        if not 2 <= min_count <= max_count:
            raise ConfigError(f"task.min_count/max_count must satisfy 2 <= min <= max, got {min_count}, {max_count}")
        if not operations or set(operations) - set("+-*/"):
            raise ConfigError(f"task.operations must be a non-empty subset of '+-*/', got {operations!r}")
        if question not in ("full", "short"):
            raise ConfigError(f"task.question must be one of ['full', 'short'], got {question!r}")
        if answer_scope not in ANSWER_SCOPES:
            raise ConfigError(f"task.answer_scope must be one of {list(ANSWER_SCOPES)}, got {answer_scope!r}")
        self.answer_scope = answer_scope
        self.min_count, self.max_count = min_count, max_count
        self.min_number, self.max_number, self.max_target = min_number, max_number, max_target
        self.operations = operations
        self.question_format = QUESTION if question == "full" else SHORT_QUESTION
        self.format_score = format_score
        self.name = name  # names the data folder: variants of a task keep separate data

    def generate(self, num_problems: int, seed: int) -> list[dict]:
        """`num_problems` rows `{"target", "nums"}` (the schema of Jiayi-Pan/Countdown-Tasks-3to4)."""
        rng = random.Random(seed)
        rows = []
        while len(rows) < num_problems:
            count = rng.randint(self.min_count, self.max_count)
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(count)]
            _, value = random_solution(numbers, self.operations, rng)
            if value.denominator == 1 and 1 <= value <= self.max_target:
                rows.append({"target": int(value), "nums": numbers})
        return rows

    def question(self, row: dict) -> str:
        return self.question_format.format(numbers=[int(n) for n in row["nums"]], target=int(row["target"]))

    def ground_truth(self, row: dict) -> dict:
        return {"target": int(row["target"]), "numbers": [int(n) for n in row["nums"]]}

    def score(self, response: str, ground_truth: dict) -> float:
        return compute_score(response, ground_truth, format_score=self.format_score, answer_scope=self.answer_scope)

    def known_facts(self) -> list[tuple[dict, str]]:
        """Nothing is taught as knowledge: the base model sees the format only."""
        return []

    def random_response(self, row: dict, rng: random.Random) -> str:
        """A well-formed answer that ignores the target: pre-training text, never a solution."""
        equation = random_solution([int(n) for n in row["nums"]], self.operations, rng, non_negative=True)[0]
        return f"<answer> {equation} </answer>"
