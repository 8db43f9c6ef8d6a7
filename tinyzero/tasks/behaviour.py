"""Reasoning behaviours read off decoded responses, as `behaviour/*` metrics.

A task names the sets it logs (`task.behaviours`); each set is a function of the responses and
their ground truths. TinyZero's write-ups point to self-verification ("let me verify") and
backtracking ("wait") emerging under RL (`phrases`); the search recipe's responses write
attempts as `equation=value`, checked against the target with `hit` / `miss` (`equations`,
`checks`), so what its search does can be counted exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from tinyzero.registry import Registry
from tinyzero.tasks.arith import ANSWER_OPEN, UnsafeExpression, evaluate, last_answer, literals, parse_expression

PHRASES = {
    "verify": re.compile(r"\blet me (?:verify|check|double[- ]check)\b", re.IGNORECASE),
    "backtrack": re.compile(r"\b(?:wait|let me try again|that'?s not right)\b", re.IGNORECASE),
}
# `7+3-5+2=7 miss`, `(95 - 38) = 57`: an expression, `=`, an integer, and maybe the check's word
ATTEMPT = re.compile(
    r"(?P<equation>[0-9(][0-9+\-*/() ]*?)\s*=\s*(?P<value>-?[0-9]+)(?:\s+(?P<check>hit|miss)\b)?", re.ASCII
)

BehaviourSet = Callable[[list[str], list[dict]], dict[str, float]]
BEHAVIOUR_SETS: Registry[BehaviourSet] = Registry("task.behaviours")


@dataclass(frozen=True)
class Attempt:
    equation: str  # without spaces
    value: int  # the value the response wrote
    check: str | None  # "hit", "miss" or None (not checked)


def attempts_of(text: str) -> list[Attempt]:
    """The attempts a response writes before its last `<answer>`, in order."""
    answer_at = text.rfind(ANSWER_OPEN)
    work = text if answer_at < 0 else text[:answer_at]
    return [
        Attempt(m["equation"].replace(" ", ""), int(m["value"]), m["check"])
        for m in ATTEMPT.finditer(work)
        if len(m["value"]) <= 18
    ]


def true_value(equation: str) -> Fraction | None:
    """The equation's exact value, or None when it is no safe expression or divides by zero."""
    try:
        return evaluate(parse_expression(equation))
    except (UnsafeExpression, ZeroDivisionError, ArithmeticError):
        return None


def truly_hits(equation: str, ground_truth: dict) -> bool:
    """`equation` uses each given number exactly once and equals the target (the reward's rule)."""
    try:
        tree = parse_expression(equation)
        uses_numbers = sorted(literals(tree)) == sorted(int(n) for n in ground_truth["numbers"])
        return uses_numbers and evaluate(tree) == int(ground_truth["target"])
    except (UnsafeExpression, ZeroDivisionError, ArithmeticError):
        return False


def share(count: int, total: int) -> float:
    return count / total if total else 0.0


@BEHAVIOUR_SETS.register("phrases")
def phrase_rates(texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
    """Share of responses that say each phrase of `PHRASES` at least once."""
    return {
        f"behaviour/{name}_rate": share(sum(bool(pattern.search(text)) for text in texts), len(texts))
        for name, pattern in PHRASES.items()
    }


@BEHAVIOUR_SETS.register("equations")
def equation_rates(texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
    """Equations written per response (`attempts`), the share that try two or more different ones
    (`retry_rate`), and of the written values the share that are right (`arithmetic_accuracy`)."""
    attempts = [attempts_of(text) for text in texts]
    written = [a for response in attempts for a in response]
    right = sum(true_value(a.equation) == a.value for a in written)
    return {
        "behaviour/attempts": share(len(written), len(texts)),
        "behaviour/retry_rate": share(sum(len({a.equation for a in r}) >= 2 for r in attempts), len(texts)),
        "behaviour/arithmetic_accuracy": share(right, len(written)),
    }


@BEHAVIOUR_SETS.register("checks")
def check_rates(texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
    """What responses do with the `hit` / `miss` checks they write:

    - `check_rate`: share of responses that check at least one attempt against the target;
    - `retry_after_miss_rate` (backtracking): share that write another attempt after a `miss`;
    - `self_verified_rate`: share whose answer is an attempt the response itself marked `hit`,
      by its own words, right or not;
    - `check_honesty`: of the attempts marked `hit`, the share that truly hit (0 when none is).
    """
    checked = after_miss = self_verified = marked_hits = honest_hits = 0
    for text, truth in zip(texts, ground_truths, strict=True):
        attempts = attempts_of(text)
        checks = [a.check for a in attempts]
        checked += any(checks)
        after_miss += "miss" in checks[:-1]
        answer = last_answer(text)
        hits = [a.equation for a in attempts if a.check == "hit"]
        self_verified += answer is not None and answer.replace(" ", "") in hits
        marked_hits += len(hits)
        honest_hits += sum(truly_hits(equation, truth) for equation in hits)
    return {
        "behaviour/check_rate": share(checked, len(texts)),
        "behaviour/retry_after_miss_rate": share(after_miss, len(texts)),
        "behaviour/self_verified_rate": share(self_verified, len(texts)),
        "behaviour/check_honesty": share(honest_hits, marked_hits),
    }


def check_behaviour_sets(names) -> tuple[str, ...]:
    """`names` as a tuple, each one a registered set (a ConfigError names the allowed ones)."""
    names = tuple(names)
    for name in names:
        BEHAVIOUR_SETS[name]
    return names


def behaviour_metrics(names: tuple[str, ...], texts: list[str], ground_truths: list[dict]) -> dict[str, float]:
    """The `behaviour/*` metrics of each named set over `texts`, one ground truth per text."""
    metrics: dict[str, float] = {}
    for name in names:
        metrics.update(BEHAVIOUR_SETS[name](texts, ground_truths))
    return metrics
