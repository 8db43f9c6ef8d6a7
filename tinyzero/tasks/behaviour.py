"""Reasoning behaviours read off decoded responses: how often the model checks or backtracks.

TinyZero's write-ups point to self-verification ("let me verify", "let me check") and
backtracking ("wait") emerging under RL; these rates make that visible per step.
"""

from __future__ import annotations

import re

BEHAVIOURS = {
    "verify": re.compile(r"\blet me (?:verify|check|double[- ]check)\b", re.IGNORECASE),
    "backtrack": re.compile(r"\b(?:wait|let me try again|that'?s not right)\b", re.IGNORECASE),
}


def behaviour_rates(texts: list[str]) -> dict[str, float]:
    """Fraction of `texts` that show each behaviour, as `behaviour/<name>_rate`."""
    if not texts:
        return {f"behaviour/{name}_rate": 0.0 for name in BEHAVIOURS}
    return {
        f"behaviour/{name}_rate": sum(bool(pattern.search(text)) for text in texts) / len(texts)
        for name, pattern in BEHAVIOURS.items()
    }
