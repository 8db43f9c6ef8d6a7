"""Triton kernels (installed as `tinyzero.kernels`), each beside the plain-torch reference it is tested against.

    from tinyzero.kernels import logprobs_and_entropy, gae, linear_logprobs_and_entropy

Importing the package imports triton: under the CPU interpreter, set `TRITON_INTERPRET=1` first.
"""

try:
    from tinyzero.kernels.gae import gae
    from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy
    from tinyzero.kernels.logprobs import logprobs_and_entropy
except ModuleNotFoundError as error:  # no triton (no wheels off Linux): the torch references still run
    if error.name != "triton":
        raise
    _missing = error

    def __getattr__(name: str):
        if name not in __all__:  # e.g. `__version__`, which transformers probes with getattr(..., default)
            raise AttributeError(f"module 'tinyzero.kernels' has no attribute {name!r}")
        raise ImportError(f"tinyzero.kernels.{name} needs triton ({_missing})")


__all__ = ["gae", "linear_logprobs_and_entropy", "logprobs_and_entropy"]
