"""Models: loading policies, critics and tokenizers; tiny ones built for tests and the CPU demo."""

from tinyzero.models.loading import load_critic, load_policy, load_tokenizer

__all__ = ["load_critic", "load_policy", "load_tokenizer"]
