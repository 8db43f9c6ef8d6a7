import pytest

from tinyzero.data.sources import ensure_data, hub_rows, read_rows, write_rows
from tinyzero.tasks import CountdownTask, MultiplicationTask


def test_generated_splits_are_disjoint_and_deterministic(tmp_path):
    task = CountdownTask(min_count=2, max_count=2, max_number=9, operations="+*")
    paths = ensure_data(task, tmp_path / "a", "generate", 300, 50, seed=1)
    again = ensure_data(task, tmp_path / "b", "generate", 300, 50, seed=1)
    train, test = (read_rows(paths[s], task.columns) for s in ("train", "test"))
    assert len(train) == 300 and len(test) == 50
    assert train == read_rows(again["train"], task.columns)
    assert not {repr(r) for r in train} & {repr(r) for r in test}


def test_a_users_own_data_files_are_read_and_never_rewritten(tmp_path):
    task = CountdownTask(min_count=2, max_count=2, max_number=9, operations="+*")
    mine = {"train": [{"target": 7, "nums": [3, 4]}] * 5, "test": [{"target": 12, "nums": [3, 4]}] * 2}
    for split, rows in mine.items():
        write_rows(rows, tmp_path / f"{split}.parquet")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    paths = ensure_data(task, tmp_path, "generate", 300, 50, seed=1)  # no spec.json: not ours to rewrite
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before
    assert {split: read_rows(path, task.columns) for split, path in paths.items()} == mine


def test_hub_schema_loads_from_a_local_parquet(tmp_path):
    # The schema of Jiayi-Pan/Countdown-Tasks-3to4: `target`, `nums`; read through `datasets`.
    rows = [{"target": 10 + i, "nums": [i + 1, 2, 3]} for i in range(12)]
    write_rows(rows, tmp_path / "hub" / "train.parquet")
    splits = hub_rows(str(tmp_path / "hub"), {"train": 8, "test": 4}, CountdownTask.columns)
    assert splits["train"] == rows[:8] and splits["test"] == rows[8:]
    with pytest.raises(ValueError, match="fewer than"):
        hub_rows(str(tmp_path / "hub"), {"train": 10, "test": 4}, CountdownTask.columns)


def test_read_rows_checks_columns_and_emptiness(tmp_path):
    write_rows([{"a": 1}], tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"lacks columns \['b'\]"):
        read_rows(tmp_path / "bad.parquet", MultiplicationTask.columns)
    with pytest.raises(FileNotFoundError, match="make_data"):
        read_rows(tmp_path / "missing.parquet", {"a": "int"})


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"target": "24", "nums": [2, 3, 4]}],
            r"column types \{'target': 'string'\}; the task needs \{'target': 'int'\}",
        ),
        ([{"target": 24, "nums": ["2", "3"]}], r"column types \{'nums': 'list<element: string>'\}"),
        (
            [{"target": 24, "nums": [2, 3]}, {"target": None, "nums": [1, 2]}],
            r"empty values \(nulls per column: \{'target': 1\}\)",
        ),
        ([{"target": 24}], r"lacks columns \['nums'\]"),
    ],
)
def test_malformed_data_files_fail_naming_the_file_and_column(tmp_path, rows, message):
    path = write_rows(rows, tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=message):
        read_rows(path, CountdownTask.columns)


def test_empty_and_unreadable_data_files_fail_clearly(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="empty.parquet has no rows"):
        read_rows(tmp_path / "empty.parquet", MultiplicationTask.columns)
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="garbage.parquet is not a readable parquet file"):
        read_rows(tmp_path / "garbage.parquet", MultiplicationTask.columns)


@pytest.fixture
def tokenizer(tiny_dir):
    from tinyzero.models import load_tokenizer

    return load_tokenizer(str(tiny_dir))


def test_overlong_prompts_are_dropped_truncated_or_rejected_and_counted(tokenizer, caplog):
    from tinyzero.data.datamodule import PromptSet
    from tinyzero.tasks import render_prompt

    task = MultiplicationTask()
    rows = [{"a": 12, "b": 34}, {"a": 10**30, "b": 10**30}, {"a": 5, "b": 6}]
    prompts = [render_prompt(task.question(row), "plain") for row in rows]
    lengths = [len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in prompts]
    limit = max(lengths[0], lengths[2])
    assert lengths[1] > limit
    dropped = PromptSet(task, tokenizer, rows, "plain", limit, "train", "drop")
    assert dropped.num_overlong == 1 and [item["index"] for item in dropped.items] == [0, 2]
    assert "train: dropped 1 of 3 prompts longer than data.max_prompt_length" in caplog.text
    truncated = PromptSet(task, tokenizer, rows, "plain", limit, "train", "truncate")
    assert truncated.num_overlong == 1 and len(truncated.items) == 3
    full = tokenizer(prompts[1], add_special_tokens=False)["input_ids"]
    assert truncated.items[1]["prompt_ids"] == full[-limit:]  # the end of the prompt is kept
    with pytest.raises(ValueError, match=r"train: 1 of 3 prompts are longer than data.max_prompt_length=.*row 1"):
        PromptSet(task, tokenizer, rows, "plain", limit, "train", "error")
    with pytest.raises(ValueError, match="data.overlong_prompts='cut' is not allowed"):
        PromptSet(task, tokenizer, rows, "plain", limit, "train", "cut")


def test_tokenizers_without_eos_or_pad(tiny_dir, tmp_path, caplog):
    import json
    import logging
    import shutil

    from tinyzero.models import load_tokenizer

    def variant(name, drop):
        target = tmp_path / name
        shutil.copytree(tiny_dir, target)
        config_path = target / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        for key in drop:
            config[key] = None
        config_path.write_text(json.dumps(config))
        return str(target)

    with caplog.at_level(logging.INFO, logger="tinyzero.models.loading"):
        no_pad = load_tokenizer(variant("no_pad", ["pad_token"]))
    assert no_pad.pad_token_id == no_pad.eos_token_id
    assert "has no pad token: padding with EOS" in caplog.text
    with pytest.raises(ValueError, match="has no EOS token: rollouts could never stop"):
        load_tokenizer(variant("no_eos", ["eos_token", "pad_token"]))
