import os
import random
import re
import time

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyzero.tasks import countdown, multiplication
from tinyzero.tasks.countdown import CountdownTask
from tinyzero.tasks.multiplication import MultiplicationTask

GT = {"target": 24, "numbers": [2, 3, 4]}
TIME_BOUND_S = 0.05


def timed_score(fn, text, gt):
    start = time.perf_counter()
    score = fn(text, gt)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, f"scoring took {elapsed * 1000:.1f} ms"
    return score


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<answer>2 * 3 * 4</answer>", 1.0),
        ("<think>try</think> <answer> (4 * 3) * 2 </answer>", 1.0),
        ("<answer>4 * (3 + 3)</answer>", 0.1),  # 3 used twice, 2 unused
        ("<answer>2 + 3 + 4</answer>", 0.1),  # valid but wrong value
        ("<answer>2 * 3</answer>", 0.1),  # a number missing
        ("no answer here", 0.0),
        ("<answer>2 * 3 * 4", 0.0),  # unclosed
        ("<answer>1</answer> then <answer>2*3*4</answer>", 1.0),  # the last answer counts
        ("<answer>2*3*4</answer> then <answer>1</answer>", 0.1),
        ("<answer>4 / (3 - 3) * 2</answer>", 0.1),  # division by zero
        ("<answer>2 * 3 * 4 +</answer>", 0.1),  # syntax error
        ("<answer>-2 * -3 * 4</answer>", 1.0),  # unary minus is arithmetic
        ("<answer>2.0 * 3 * 4</answer>", 0.1),  # floats are not the given integers
    ],
)
def test_countdown_cases(response, expected):
    assert countdown.compute_score(response, GT) == expected


def test_countdown_division_exact():
    assert countdown.compute_score("<answer>7 / 21 * 3</answer>", {"target": 1, "numbers": [3, 7, 21]}) == 1.0
    assert countdown.compute_score("<answer>6 / 3 * 1</answer>", {"target": 2, "numbers": [1, 3, 6]}) == 1.0
    assert countdown.compute_score("<answer>6 / 4 * 1</answer>", {"target": 1, "numbers": [1, 4, 6]}) == 0.1


def test_countdown_custom_scores():
    assert countdown.compute_score("<answer>2+3+4</answer>", GT, format_score=0.0, score=2.0) == 0.0
    assert countdown.compute_score("<answer>2*3*4</answer>", GT, format_score=0.0, score=2.0) == 2.0


@pytest.mark.parametrize(
    "response, anywhere, last_line",
    [
        ("<think>2 * 3 * 4 = 24</think>\n<answer>2 * 3 * 4</answer>", 1.0, 1.0),
        ("<answer>2 * 3 * 4</answer>", 1.0, 1.0),  # one line: the same
        ("<answer>2 * 3 * 4</answer>\n", 1.0, 0.0),  # the last line is empty
        ("<answer>2 * 3 * 4</answer>\nso that is it.", 1.0, 0.0),
        ("<answer>2 * 3 * 4</answer>\n<answer>2 + 3 + 4</answer>", 0.1, 0.1),
        ("<answer>2 + 3 + 4</answer>\ntry again: <answer>2 * 3 * 4</answer>", 1.0, 1.0),
        ("<answer>2 * 3\n* 4</answer>", 0.1, 0.0),  # over two lines: not one expression; no answer on the last
        (None, 0.0, 0.0),
    ],
)
def test_countdown_answer_scope(response, anywhere, last_line):
    """TinyZero's reward reads only the last line of the response; ours by default the last complete
    answer anywhere in it."""
    assert countdown.compute_score(response, GT) == anywhere
    assert CountdownTask().score(response, GT) == anywhere
    assert countdown.compute_score(response, GT, answer_scope="last_line") == last_line
    assert CountdownTask(answer_scope="last_line").score(response, GT) == last_line


def test_countdown_answer_scope_from_config():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task.answer_scope=last_line"])
    assert instantiate(cfg.task).score("<answer>2 * 3 * 4</answer>\ndone", GT) == 0.0
    with pytest.raises(ValueError, match=r"task.answer_scope must be one of \['anywhere', 'last_line'\]"):
        CountdownTask(answer_scope="last")


HOSTILE = [
    "<answer>9**9**9</answer>",
    "<answer>2**3**4</answer>",
    "<answer>" + "9" * 1_000_000 + "</answer>",
    "x" * 1_000_000,
    "<answer>" * 100_000 + "</answer>",
    "<answer>" + "(" * 10_000 + "2*3*4" + ")" * 10_000 + "</answer>",
    "<answer>" + "-" * 10_000 + "2*3*4</answer>",
    "<answer>__import__('os').system('echo pwned')</answer>",
    "<answer>٢ * ٣ * ٤</answer>",  # arabic-indic digits
    "<answer>２*３*４</answer>",  # full-width digits
    "<answer>" + "+".join(["1"] * 200_000) + "</answer>",
    "<answer>lambda: 0</answer>",
    "<answer>[2, 3, 4]</answer>",
    "<answer>2 // 3 * 4</answer>",
    "<answer>\x00\udcff</answer>",
    "<answer>" + "2*3*4 " * 100 + "</answer>",
]


@pytest.mark.parametrize("response", HOSTILE, ids=range(len(HOSTILE)))
def test_countdown_hostile_inputs_are_fast_and_safe(response):
    assert timed_score(countdown.compute_score, response, GT) == 0.1 or response.count("</answer>") == 0


@pytest.mark.parametrize("response", HOSTILE, ids=range(len(HOSTILE)))
def test_multiplication_hostile_inputs_are_fast_and_safe(response):
    assert timed_score(multiplication.compute_score, response, {"product": 24}) in (0.0, 0.1)


def test_hostile_scores_are_format_scores():
    # every hostile answer above is closed, so each is a format score, never a reward
    for response in HOSTILE:
        expected = 0.0 if "</answer>" not in response else 0.1
        assert timed_score(countdown.compute_score, response, GT) == expected


def test_non_string_response_scores_zero():
    assert countdown.compute_score(None, GT) == 0.0
    assert multiplication.compute_score(b"<answer>24</answer>", {"product": 24}) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<answer>1554</answer>", 1.0),
        ("<answer> 1554 </answer>", 1.0),
        ("<answer>1555</answer>", 0.1),
        ("<answer>42 * 37</answer>", 0.1),  # restating the question is not an answer
        ("<answer>1,554</answer>", 0.1),
        ("1554", 0.0),
    ],
)
def test_multiplication_cases(response, expected):
    assert multiplication.compute_score(response, {"product": 42 * 37}) == expected


def test_countdown_generation_is_seeded_and_solvable():
    task = CountdownTask()
    rows = task.generate(300, seed=3)
    assert rows == task.generate(300, seed=3)
    assert rows != task.generate(300, seed=4)
    for row in rows:
        assert 3 <= len(row["nums"]) <= 4
        assert all(1 <= n <= 100 for n in row["nums"])
        assert 1 <= row["target"] <= 1000


def test_countdown_generated_solution_scores_one():
    import random

    from tinyzero.tasks.countdown import random_solution

    rng = random.Random(0)
    solved = 0
    for _ in range(200):
        numbers = [rng.randint(1, 100) for _ in range(rng.randint(3, 4))]
        text, value = random_solution(numbers, "+-*/", rng)
        if value.denominator == 1:
            gt = {"target": int(value), "numbers": numbers}
            assert countdown.compute_score(f"<answer>{text}</answer>", gt) == 1.0
            solved += 1
    assert solved > 50


def test_multiplication_generation_digits():
    rows = MultiplicationTask(digits_a=3, digits_b=2).generate(100, seed=0)
    assert all(100 <= r["a"] <= 999 and 10 <= r["b"] <= 99 for r in rows)
    assert MultiplicationTask().ground_truth({"a": 12, "b": 34}) == {"product": 408}


WORKED = re.compile(r"<think> (.*) </think> <answer> (\d+) </answer>")


@pytest.mark.parametrize("digits_a", [1, 2, 3])
def test_worked_pretraining_responses_follow_the_procedure_but_not_the_product(digits_a):
    """Each digit of `a` (units first) times `b` is a multiple of `b`, the sum of the shifted
    products is added right, the answer is that sum; and it hits the product only by chance."""
    task = MultiplicationTask(digits_a=digits_a, digits_b=1, pretrain_format="worked")
    rng, hits = random.Random(0), 0
    rows = task.generate(2000, seed=0)
    for row in rows:
        response = task.random_response(row, rng)
        think, answer = WORKED.fullmatch(response).groups()
        steps = think.split(", ")
        digits = [int(d) for d in reversed(str(row["a"]))]
        products = []
        for digit, step in zip(digits, steps):
            factors, product = step.split("=")
            assert factors == f"{digit}*{row['b']}"
            assert int(product) in {k * row["b"] for k in range(10)}
            products.append(int(product))
        shifted = [p * 10**place for place, p in enumerate(products)]
        if digits_a > 1:
            assert steps[-1] == "+".join(map(str, reversed(shifted))) + f"={sum(shifted)}"
        assert int(answer) == sum(shifted) and task.score(response, task.ground_truth(row)) in (0.1, 1.0)
        hits += task.score(response, task.ground_truth(row)) == 1.0
    # right only when every digit's random multiple is (1 in 10 each; b = 0 always)
    assert hits / len(rows) < 0.1 + 0.9 * 0.1**digits_a + 0.03


def test_pretraining_text_formats_name_the_key():
    with pytest.raises(ValueError, match=r"task.pretrain_format must be one of \['answer', 'worked'\]"):
        MultiplicationTask(pretrain_format="steps")
    with pytest.raises(ValueError, match="task.pretrain_format=worked needs task.digits_b=1, got 2"):
        MultiplicationTask(digits_b=2, pretrain_format="worked")
    with pytest.raises(ValueError, match="task.times_table needs task.pretrain_format=worked and task.digits_a > 1"):
        MultiplicationTask(digits_a=1, digits_b=1, pretrain_format="worked", times_table=True)
    plain = MultiplicationTask(digits_a=2, digits_b=1).random_response({"a": 47, "b": 6}, random.Random(0))
    assert re.fullmatch(r"<answer> \d{3} </answer>", plain)


def test_bad_task_config_names_the_key():
    with pytest.raises(ValueError, match="task.operations"):
        CountdownTask(operations="+^")
    with pytest.raises(ValueError, match="task.question"):
        MultiplicationTask(question="long")


# ---- property-based: any string, scored quickly, to one of the three values -------------------

OPERATORS = ["+", "-", "*", "/", "**", "//", "%", "", " ", "^", "<<", "@", "and", "if", "lambda:"]
ATOMS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["9**9**9", "1e308", "0", "0x10", "1_000", "()", "[]", "__import__('os')", "nan", "inf", "١٢"]),
    st.text(max_size=8),
)
EXPRESSIONS = st.recursive(
    ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(OPERATORS), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"-{e}"),
    ),
    max_leaves=25,
)
RESPONSES = st.one_of(
    st.text(max_size=3000),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.builds(
        lambda before, answer, after: f"{before}<answer>{answer}</answer>{after}",
        st.text(max_size=60),
        st.one_of(EXPRESSIONS, st.text(max_size=100)),
        st.text(max_size=60),
    ),
    st.integers(0, 3000).map(lambda n: "<answer>" + "(" * n + "1" + ")" * n + "</answer>"),
    st.integers(0, 3000).map(lambda n: "<answer>" * n + "2 * 3" + "</answer>" * n),
    st.integers(0, 20000).map(lambda n: "<answer>" + "9" * n + "</answer>"),
    st.integers(0, 500).map(lambda n: "<answer>" + "2**" * n + "2</answer>"),
)
HYPOTHESIS = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@HYPOTHESIS
@given(
    response=RESPONSES,
    target=st.integers(-1000, 1000),
    numbers=st.lists(st.integers(-5, 100), min_size=1, max_size=5),
)
def test_countdown_score_of_any_string(response, target, numbers):
    score = timed_score(countdown.compute_score, response, {"target": target, "numbers": numbers})
    assert score in (0.0, 0.1, 1.0)


@HYPOTHESIS
@given(response=RESPONSES, product=st.integers(-(10**12), 10**12))
def test_multiplication_score_of_any_string(response, product):
    score = timed_score(multiplication.compute_score, response, {"product": product})
    assert score in (0.0, 0.1, 1.0)


def test_the_times_table_is_its_share_of_pretraining_and_never_a_task_problem():
    from tinyzero.models.pretrain import pretraining_texts

    task = MultiplicationTask(digits_a=2, digits_b=1, question="short", pretrain_format="worked", times_table=True)
    facts = task.known_facts()
    assert len(facts) == 100 and facts[42][1] == "<think> 4*2=8 </think> <answer> 8 </answer>"
    asked = {(r["a"], r["b"]) for r in task.generate(5000, seed=0)}
    assert not asked & {(row["a"], row["b"]) for row, _ in facts}
    for share, table_texts in ((0.1, 200), (0.15, 300)):
        texts = pretraining_texts(task, "plain", 2000, seed=0, facts_share=share)
        assert len(texts) == 2000 and sum("</think> <answer>" in t and "," not in t for t in texts) == table_texts
    with pytest.raises(ValueError, match=r"model.pretrain.facts_share=1.0 must be in \[0, 1\)"):
        pretraining_texts(task, "plain", 2000, seed=0, facts_share=1.0)
    assert MultiplicationTask().known_facts() == [] and CountdownTask().known_facts() == []
