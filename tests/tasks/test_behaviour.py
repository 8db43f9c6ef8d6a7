from tinyzero.tasks.behaviour import behaviour_rates


def test_behaviour_rates_count_responses_not_phrases():
    texts = [
        "<think>3 + 4 = 7. Let me verify: 7 is right. Let me check again.</think>",
        "<think>Wait, 3 * 4 = 12, not 7.</think>",
        "<think>3 + 4</think> <answer>3 + 4</answer>",
        "<think>let me double-check... awaiting</think>",
    ]
    rates = behaviour_rates(texts)
    assert rates["behaviour/verify_rate"] == 0.5  # responses 0 and 3, each counted once
    assert rates["behaviour/backtrack_rate"] == 0.25  # "awaiting" is not "wait"


def test_behaviour_rates_of_no_responses():
    assert behaviour_rates([]) == {"behaviour/verify_rate": 0.0, "behaviour/backtrack_rate": 0.0}
