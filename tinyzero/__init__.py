"""tinyzero: R1-Zero style reinforcement learning on small language models."""
