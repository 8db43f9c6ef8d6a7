"""Countdown: combine the given numbers, each exactly once, with + - * / to reach the target."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

from tinyzero.errors import ConfigError
from tinyzero.tasks.arith import UnsafeExpression, evaluate, last_answer, literals, parse_expression
from tinyzero.tasks.behaviour import behaviour_metrics, check_behaviour_sets

QUESTION = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>."
)
SHORT_QUESTION = "Using the numbers {numbers}, create an equation that equals {target}."
# where the answer is read: the last complete <answer> anywhere, or only on the last line (TinyZero)
ANSWER_SCOPES = ("anywhere", "last_line")
# the tiny base's pre-training responses (see `CountdownTask.random_response`)
PRETRAIN_FORMATS = ("answer", "search", "single")
ANSWERED_ATTEMPTS = ("last", "random")  # which attempt the search text answers: never chosen for being right
HIT, MISS = "hit", "miss"  # the search format's words for an attempt checked against the target


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


def flat_equation(numbers: list[int], operations: str, rng: random.Random) -> tuple[str, Fraction]:
    """A random order of `numbers` joined by random `operations`, written without spaces or
    parentheses (`7+3-5+2`), and its exact value under the usual precedence."""
    order = rng.sample(numbers, len(numbers))
    text = str(order[0]) + "".join(f"{rng.choice(operations)}{n}" for n in order[1:])
    return text, evaluate(parse_expression(text))


def distinct_attempts(numbers: list[int], operations: str, count: int, rng: random.Random) -> list[tuple[str, int]]:
    """Up to `count` flat equations of `numbers` of different values, with their values, drawn at
    random whatever the target: a search that never tries a value twice (fewer attempts when the
    numbers make fewer values)."""
    attempts: dict[int, str] = {}
    for _ in range(20 * count):
        text, value = flat_equation(numbers, operations, rng)
        attempts.setdefault(int(value), text)
        if len(attempts) == count:
            break
    return [(text, value) for value, text in attempts.items()]


def hit_probability(numbers: list[int], target: int, operations: str) -> float:
    """The chance that one flat equation of `numbers` drawn by `flat_equation` equals `target`,
    exactly: every order and choice of operations counted with its probability."""
    orders = list(itertools.permutations(numbers))
    choices = list(itertools.product(operations, repeat=len(numbers) - 1))
    hits = 0
    for order in orders:
        for ops in choices:
            text = str(order[0]) + "".join(f"{op}{n}" for op, n in zip(ops, order[1:]))
            hits += evaluate(parse_expression(text)) == target
    return hits / (len(orders) * len(choices))


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
        pretrain_format: str = "answer",
        continue_prob: float = 0.3,
        max_attempts: int = 6,
        answered_attempt: str = "last",
        behaviours: tuple[str, ...] = ("phrases", "equations"),
    ):
        if not 2 <= min_count <= max_count:
            raise ConfigError(f"task.min_count/max_count must satisfy 2 <= min <= max, got {min_count}, {max_count}")
        if not operations or set(operations) - set("+-*/"):
            raise ConfigError(f"task.operations must be a non-empty subset of '+-*/', got {operations!r}")
        if question not in ("full", "short"):
            raise ConfigError(f"task.question must be one of ['full', 'short'], got {question!r}")
        if answer_scope not in ANSWER_SCOPES:
            raise ConfigError(f"task.answer_scope must be one of {list(ANSWER_SCOPES)}, got {answer_scope!r}")
        if pretrain_format not in PRETRAIN_FORMATS:
            raise ConfigError(f"task.pretrain_format must be one of {list(PRETRAIN_FORMATS)}, got {pretrain_format!r}")
        if pretrain_format != "answer" and "/" in operations:
            raise ConfigError(
                f"task.pretrain_format={pretrain_format} writes each attempt's value as an integer: "
                f"task.operations must leave out '/', got {operations!r}"
            )
        if not 0 <= continue_prob < 1:
            raise ConfigError(f"task.continue_prob must be in [0, 1), got {continue_prob}")
        if max_attempts < 1:
            raise ConfigError(f"task.max_attempts must be >= 1, got {max_attempts}")
        if answered_attempt not in ANSWERED_ATTEMPTS:
            raise ConfigError(
                f"task.answered_attempt must be one of {list(ANSWERED_ATTEMPTS)}, got {answered_attempt!r}"
            )
        self.pretrain_format, self.continue_prob, self.max_attempts = pretrain_format, continue_prob, max_attempts
        self.answered_attempt = answered_attempt
        self.behaviour_sets = check_behaviour_sets(behaviours)
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

    def behaviours(self, texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
        """`behaviour/*` metrics of the responses `texts` (one ground truth each)."""
        return behaviour_metrics(self.behaviour_sets, texts, ground_truths)

    def known_facts(self) -> list[tuple[dict, str]]:
        """Nothing is taught as knowledge: the base model sees the format only."""
        return []

    def random_response(self, row: dict, rng: random.Random) -> str:
        """A well-formed response whose answer ignores the target: pre-training text that never
        picks an equation because it is right.

        `answer`: one random equation, `<answer> (7 + 3) - 5 </answer>`. `search`: a `<think>` of a
        random number of attempts of different values (one, then another with probability `continue_prob`,
        at most `max_attempts`), each with its value honestly computed and honestly checked against
        the target, then as the answer the last of them (`answered_attempt=last`) or a random one,
        hit or not: `<think> 7+3-5+2=7 miss, 2+7-3+5=11 hit, 7+3+5-2=13 miss </think> <answer>
        7+3+5-2 </answer>`. How many attempts there are and which is answered never depend on a hit.
        `single` (the search format's control): one attempt and its value, no check:
        `<think> 7+3-5+2=7 </think> <answer> 7+3-5+2 </answer>`.
        """
        numbers = [int(n) for n in row["nums"]]
        if self.pretrain_format == "answer":
            return f"<answer> {random_solution(numbers, self.operations, rng, non_negative=True)[0]} </answer>"
        count = 1
        while self.pretrain_format == "search" and count < self.max_attempts and rng.random() < self.continue_prob:
            count += 1
        attempts = distinct_attempts(numbers, self.operations, count, rng)
        if self.pretrain_format == "single":
            lines = [f"{text}={value}" for text, value in attempts]
        else:
            lines = [f"{text}={value} {HIT if value == int(row['target']) else MISS}" for text, value in attempts]
        answer = attempts[-1][0] if self.answered_attempt == "last" else rng.choice(attempts)[0]
        return f"<think> {', '.join(lines)} </think> <answer> {answer} </answer>"
