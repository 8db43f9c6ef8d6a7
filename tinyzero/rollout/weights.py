"""The weights a rollout engine is sent (Hugging Face checkpoint keys) and a push's completeness."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open


def checkpoint_weight_names(path: str | Path) -> set[str]:
    """Every tensor name in a Hugging Face safetensors checkpoint (sharded or not).

    A tied-embedding checkpoint has no `lm_head.weight`: the engine ties it to `embed_tokens`.
    """
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors checkpoint in {path}")
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names.update(f.keys())
    return names


def missing_weights(loaded: Iterable[str], expected: set[str]) -> list[str]:
    """Parameters a push did not load: after a level-2 sleep they would hold garbage."""
    return sorted(expected - set(loaded))
