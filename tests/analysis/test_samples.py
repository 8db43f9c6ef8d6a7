import json

import pytest

from tinyzero.analysis.samples import samples_page, write_samples


def write_step(run, step: int, rows: list[dict]) -> None:
    (run / "heldout").mkdir(parents=True, exist_ok=True)
    with open(run / "heldout" / f"step_{step}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def row(index: int, response: str, score: float) -> dict:
    return {"index": index, "prompt": f"User: problem {index} <b>", "response": response, "score": score}


def test_the_page_puts_each_prompt_in_a_column_and_each_step_in_a_row(tmp_path):
    write_step(tmp_path, 0, [row(i, f"first try {i}", 0.1) for i in range(10)])
    write_step(tmp_path, 25, [row(i, f"<answer> {i} </answer>", 1.0 if i % 2 else 0.0) for i in range(10)])
    write_step(tmp_path, 100, [row(i, "later", 1.0) for i in range(10)])
    page = samples_page(tmp_path, prompts=8)
    assert page.count("<tr>") == 4  # the header and steps 0, 25, 100, in order
    assert page.index("step 0<") < page.index("step 25<") < page.index("step 100<")
    assert "problem 7 &lt;b&gt;" in page and "problem 8" not in page  # escaped; the first 8 prompts only
    assert "&lt;answer&gt; 3 &lt;/answer&gt;" in page and "held-out 0.500" in page
    assert write_samples(tmp_path).read_text() == page


def test_a_run_that_was_never_evaluated_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_every_n_steps"):
        samples_page(tmp_path)
