"""Tasks: problem generation, prompt text and rule-based rewards."""

from tinyzero.tasks.countdown import CountdownTask
from tinyzero.tasks.multiplication import MultiplicationTask
from tinyzero.tasks.templates import TEMPLATES, render_prompt

__all__ = ["CountdownTask", "MultiplicationTask", "TEMPLATES", "render_prompt"]
