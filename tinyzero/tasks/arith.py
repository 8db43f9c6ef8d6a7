"""Safe arithmetic for rewards: parse model output with `ast` into an allow-list, never `eval`.

Every check that bounds work (length, characters, nesting, literal size) runs before
`ast.parse`, so any string is scored in well under a millisecond per kilobyte and never
raises.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

MAX_EXPR_CHARS = 256
MAX_PAREN_DEPTH = 32
MAX_LITERAL_DIGITS = 18
# ASCII digits only: `re.ASCII` keeps unicode digits (e.g. '٣') out.
_ALLOWED = re.compile(r"[0-9+\-*/()\s]*", re.ASCII)

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


class UnsafeExpression(ValueError):
    """The text is not a bounded expression of integers, + - * / and parentheses."""


def last_answer(text: str) -> str | None:
    """Content of the last complete `<answer>…</answer>` in `text`, or None."""
    if not isinstance(text, str):
        return None
    close = text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    open_ = text.rfind(ANSWER_OPEN, 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(ANSWER_OPEN) : close]


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def parse_expression(text: str) -> ast.expr:
    """Parse `text` into an AST of integer literals, binary + - * /, unary minus and parentheses."""
    if len(text) > MAX_EXPR_CHARS:
        raise UnsafeExpression(f"longer than {MAX_EXPR_CHARS} characters")
    if not _ALLOWED.fullmatch(text) or "**" in text or "//" in text:
        raise UnsafeExpression("characters outside digits, + - * / ( ) and spaces")
    if _paren_depth(text) > MAX_PAREN_DEPTH:
        raise UnsafeExpression(f"parentheses nested deeper than {MAX_PAREN_DEPTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise UnsafeExpression(f"not an expression: {err}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub)):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if len(str(node.value)) > MAX_LITERAL_DIGITS:
                raise UnsafeExpression("integer literal too long")
            continue
        raise UnsafeExpression(f"{type(node).__name__} is not allowed")
    return tree.body


def literals(node: ast.expr) -> list[int]:
    """Integer literals of a parsed expression, in order of appearance."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a parsed expression; raises ZeroDivisionError on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand)
    left, right = evaluate(node.left), evaluate(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    return left / right
