"""Triton kernels (installed as `tinyzero.kernels`), each beside the plain-torch reference it is tested against;
`tinyzero.kernels.backend` picks one of the two for a run, and is the only module the rest of `tinyzero` imports.

    from tinyzero.kernels import logprobs_and_entropy, gae, linear_logprobs_and_entropy

Importing the package imports triton: under the CPU interpreter, set `TRITON_INTERPRET=1` first. Without triton
(no wheels off Linux) every module still imports and the torch references run; launching a kernel raises ImportError.
"""

from .gae import gae
from .linear_logprobs import linear_logprobs_and_entropy
from .logprobs import logprobs_and_entropy

__all__ = ["gae", "linear_logprobs_and_entropy", "logprobs_and_entropy"]
