import pytest

from tinyzero.data import ensure_data, hub_rows, read_rows, write_rows
from tinyzero.tasks import CountdownTask, MultiplicationTask


def test_generated_splits_are_disjoint_and_deterministic(tmp_path):
    task = CountdownTask(min_count=2, max_count=2, max_number=9, operations="+*")
    paths = ensure_data(task, tmp_path / "a", "generate", 300, 50, seed=1)
    again = ensure_data(task, tmp_path / "b", "generate", 300, 50, seed=1)
    train, test = (read_rows(paths[s], task.columns) for s in ("train", "test"))
    assert len(train) == 300 and len(test) == 50
    assert train == read_rows(again["train"], task.columns)
    assert not {repr(r) for r in train} & {repr(r) for r in test}


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
