"""The emergence recipe's task: four numbers, + -, pre-training text with the vocabulary of search."""

import os
import random
import re
from fractions import Fraction

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tinyzero.data.sources import problem_key
from tinyzero.errors import ConfigError
from tinyzero.models.pretrain import pretraining_texts
from tinyzero.tasks import CountdownTask
from tinyzero.tasks.arith import evaluate, literals, parse_expression
from tinyzero.tasks.countdown import hit_probability

SEARCH = re.compile(r"<think> (.*) </think> <answer> (\S+) </answer>")
ATTEMPT = re.compile(r"([0-9+\-]+)=(-?\d+) (hit|miss)")


def recipe_task(**overrides) -> CountdownTask:
    with initialize_config_dir(os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=countdown_search_tiny"])
    return instantiate(cfg.task, **overrides)


def test_one_random_equation_rarely_solves_a_problem():
    """The issue's bound: over the recipe's problems, a random equation of a problem's numbers hits
    its target with probability <= 0.15 on average (each problem's chance counted exactly)."""
    task = recipe_task()
    rows = task.generate(300, seed=0)
    chances = [hit_probability(row["nums"], row["target"], task.operations) for row in rows]
    assert all(chance > 0 for chance in chances)  # every problem has a solution
    assert sum(chances) / len(chances) <= 0.15


@pytest.mark.parametrize("answered", ["last", "random"])
def test_search_text_checks_honestly_and_never_answers_for_a_hit(answered):
    task = recipe_task(answered_attempt=answered)
    rng = random.Random(0)
    rows = task.generate(4000, seed=1)
    counts, hit_answered, hit_expected = [], 0, 0.0
    went_on = {"hit": [], "miss": []}  # after each check: did another attempt follow?
    for row in rows:
        think, answer = SEARCH.fullmatch(task.random_response(row, rng)).groups()
        attempts = [ATTEMPT.fullmatch(part).groups() for part in think.split(", ")]
        values = set()
        for equation, value, check in attempts:
            tree = parse_expression(equation)
            assert sorted(literals(tree)) == sorted(row["nums"])
            assert evaluate(tree) == Fraction(int(value))  # honestly computed
            assert check == ("hit" if int(value) == row["target"] else "miss")  # honestly compared
            values.add(value)
        assert len(values) == len(attempts) <= task.max_attempts  # never the same value twice
        equations = [equation for equation, _, _ in attempts]
        assert answer == equations[-1] if answered == "last" else answer in equations
        counts.append(len(attempts))
        for i, (_, _, check) in enumerate(attempts[: task.max_attempts - 1]):
            went_on[check].append(i + 1 < len(attempts))
        hits = [equation for equation, _, check in attempts if check == "hit"]
        if hits and len(attempts) > 1:
            hit_answered += answer in hits
            hit_expected += len(hits) / len(attempts)
    mean = sum(counts) / len(counts)
    # a geometric number of attempts, cut at max_attempts: few, longer search is for RL to find
    expected = sum(task.continue_prob**k for k in range(task.max_attempts))
    assert expected < 2.5 and abs(mean - expected) < 0.05, (mean, expected)
    # a search that hits goes on as often as one that misses, and the answer is the hit no more often
    # than its position or a random pick makes it: within 4 standard deviations of that expectation
    assert abs(hit_answered - hit_expected) < 4 * hit_expected**0.5
    rates = {check: sum(flags) / len(flags) for check, flags in went_on.items()}
    assert len(went_on["hit"]) > 300 and abs(rates["hit"] - rates["miss"]) < 0.08, rates  # both continue_prob


def test_the_control_writes_one_attempt_without_a_check():
    task = recipe_task(pretrain_format="single")
    rng = random.Random(0)
    for row in task.generate(500, seed=2):
        response = task.random_response(row, rng)
        equation, value, answer = re.fullmatch(
            r"<think> ([0-9+\-]+)=(-?\d+) </think> <answer> (\S+) </answer>", response
        ).groups()
        assert evaluate(parse_expression(equation)) == int(value) and answer == equation


def test_search_settings_name_their_keys():
    with pytest.raises(ConfigError, match=r"task.pretrain_format must be one of \['answer', 'search', 'single'\]"):
        CountdownTask(pretrain_format="essay")
    with pytest.raises(ConfigError, match="task.operations must leave out '/'"):
        CountdownTask(pretrain_format="search", operations="+-*/")
    with pytest.raises(ConfigError, match="task.continue_prob"):
        CountdownTask(pretrain_format="search", operations="+-", continue_prob=1.0)
    with pytest.raises(ConfigError, match=r"task.answered_attempt must be one of \['last', 'random'\], got 'hit'"):
        CountdownTask(pretrain_format="search", operations="+-", answered_attempt="hit")
    with pytest.raises(ConfigError, match="task.max_attempts"):
        CountdownTask(pretrain_format="search", operations="+-", max_attempts=0)


def test_held_out_problems_are_not_in_the_pretraining_text():
    task = recipe_task()
    held_out = task.generate(400, seed=5)
    plain = pretraining_texts(task, "plain", 3000, seed=0)
    questions = {task.question(row) for row in held_out}
    assert any(question in text for text in plain for question in questions)  # without it, some are
    texts = pretraining_texts(task, "plain", 3000, seed=0, held_out=held_out)
    assert len(texts) == 3000 and not any(question in text for text in texts for question in questions)
    assert pretraining_texts(task, "plain", 3000, seed=0, held_out=[]) == plain  # nothing held out: as before
    assert {problem_key(r) for r in held_out}  # rows keyed as the data splits key them
