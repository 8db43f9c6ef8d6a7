import pytest

from tinyzero.errors import ConfigError
from tinyzero.tasks import CountdownTask, MultiplicationTask
from tinyzero.tasks.behaviour import attempts_of, behaviour_metrics, check_rates, equation_rates, phrase_rates

TRUTH = {"target": 11, "numbers": [7, 3, 5, 2]}


def test_phrase_rates_count_responses_not_phrases():
    texts = [
        "<think>3 + 4 = 7. Let me verify: 7 is right. Let me check again.</think>",
        "<think>Wait, 3 * 4 = 12, not 7.</think>",
        "<think>3 + 4</think> <answer>3 + 4</answer>",
        "<think>let me double-check... awaiting</think>",
    ]
    rates = phrase_rates(texts, [{}] * 4)
    assert rates["behaviour/verify_rate"] == 0.5  # responses 0 and 3, each counted once
    assert rates["behaviour/backtrack_rate"] == 0.25  # "awaiting" is not "wait"


def test_no_responses_give_zeros():
    assert phrase_rates([], []) == {"behaviour/verify_rate": 0.0, "behaviour/backtrack_rate": 0.0}
    assert set(check_rates([], []).values()) == {0.0}
    assert set(equation_rates([], []).values()) == {0.0}


def test_attempts_are_read_before_the_answer_with_their_checks():
    text = "<think> 7+3-5+2=7 miss, (2 + 7) - 3 + 5 = 11 hit, 7-3=4 </think> <answer> 2+7-3+5=11 </answer>"
    attempts = attempts_of(text)
    assert [(a.equation, a.value, a.check) for a in attempts] == [
        ("7+3-5+2", 7, "miss"),
        ("(2+7)-3+5", 11, "hit"),
        ("7-3", 4, None),
    ]


def test_a_search_that_misses_then_hits_and_answers_the_hit():
    text = "<think> 7+3-5+2=7 miss, 2+7-3+5=11 hit </think> <answer> 2+7-3+5 </answer>"
    assert check_rates([text], [TRUTH]) == {
        "behaviour/check_rate": 1.0,
        "behaviour/retry_after_miss_rate": 1.0,
        "behaviour/self_verified_rate": 1.0,
        "behaviour/check_honesty": 1.0,
    }
    assert equation_rates([text], [TRUTH]) == {
        "behaviour/attempts": 2.0,
        "behaviour/retry_rate": 1.0,
        "behaviour/arithmetic_accuracy": 1.0,
    }


def test_a_wrong_hit_is_self_verified_but_not_honest():
    text = "<think> 7+3+5+2=11 hit </think> <answer> 7+3+5+2 </answer>"  # 7+3+5+2 is 17
    rates = check_rates([text], [TRUTH])
    assert rates["behaviour/self_verified_rate"] == 1.0
    assert rates["behaviour/check_honesty"] == 0.0
    assert rates["behaviour/retry_after_miss_rate"] == 0.0
    assert equation_rates([text], [TRUTH])["behaviour/arithmetic_accuracy"] == 0.0


def test_a_hit_of_the_target_with_other_numbers_is_not_honest():
    text = "<think> 9+2=11 hit </think> <answer> 9+2 </answer>"
    assert check_rates([text], [TRUTH])["behaviour/check_honesty"] == 0.0


def test_an_answer_that_was_never_checked_is_not_self_verified():
    texts = [
        "<think> 7+3-5+2=7 miss </think> <answer> 2+7-3+5 </answer>",  # answers an attempt it never wrote
        "<think> 2+7-3+5=11 </think> <answer> 2+7-3+5 </answer>",  # wrote it, never checked it
        "<answer> 2+7-3+5 </answer>",  # no thinking at all
    ]
    rates = check_rates(texts, [TRUTH] * 3)
    assert rates["behaviour/self_verified_rate"] == 0.0
    assert rates["behaviour/check_rate"] == pytest.approx(1 / 3)
    assert rates["behaviour/retry_after_miss_rate"] == 0.0  # the miss was the last attempt
    assert rates["behaviour/check_honesty"] == 0.0  # no hit marked


def test_malformed_attempts_count_as_written_but_never_as_right():
    text = "<think> 7+3-=5 miss, 7++3=10 miss, 7+3-5+2=7 miss </think> <answer> 7+3-5+2 </answer>"
    equations = equation_rates([text], [TRUTH])
    assert equations["behaviour/attempts"] == 3.0
    assert equations["behaviour/arithmetic_accuracy"] == pytest.approx(1 / 3)  # only the last one parses
    rates = check_rates([text], [TRUTH])
    assert rates["behaviour/retry_after_miss_rate"] == 1.0 and rates["behaviour/self_verified_rate"] == 0.0


def test_shares_are_over_responses():
    texts = [
        "<think> 7+3-5+2=7 miss, 2+7-3+5=11 hit </think> <answer> 2+7-3+5 </answer>",
        "<think> 7+3-5+2=7 miss </think> <answer> 7+3-5+2 </answer>",
        "<think> 7+3+5-2=13 miss, 7-3+5+2=11 hit, 2+3+7-5=7 miss </think> <answer> 2+3+7-5 </answer>",
        "<answer> 7+3 </answer>",
    ]
    rates = check_rates(texts, [TRUTH] * 4)
    assert rates["behaviour/check_rate"] == 0.75
    assert rates["behaviour/retry_after_miss_rate"] == 0.5
    assert rates["behaviour/self_verified_rate"] == 0.25
    assert rates["behaviour/check_honesty"] == 1.0
    assert equation_rates(texts, [TRUTH] * 4)["behaviour/attempts"] == 6 / 4


def test_tasks_log_the_sets_they_name_and_refuse_unknown_ones():
    task = CountdownTask(behaviours=["checks"])
    assert set(task.behaviours(["<answer> 1 </answer>"], [TRUTH])) == set(check_rates([], []))
    assert set(MultiplicationTask().behaviours(["x"], [{"product": 1}])) == set(phrase_rates([], []))
    with pytest.raises(ConfigError, match=r"task.behaviours='nope'.*'phrases', 'equations', 'checks'"):
        CountdownTask(behaviours=["phrases", "nope"])
    assert behaviour_metrics((), ["x"], [{}]) == {}
