"""Chunked lm_head + log-prob + entropy against float64 autograd, both backends (Triton under TRITON_INTERPRET=1)."""

import copy
import random

import pytest
import torch
from tinyzero.kernels.linear_logprobs import (
    auto_chunk_tokens,
    linear_logprobs_and_entropy,
    linear_logprobs_and_entropy_reference,
)
from torch.utils._python_dispatch import TorchDispatchMode

from tinyzero.acceptance import float64_linear_logprobs, relative_error

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def make_inputs(n, h, v, dtype=torch.float32, seed=0, padded=False):
    """hidden `[n, h]`, weight `[v, h]` scaled to logits of std ≈ 2, labels, and upstream gradients."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    if padded:
        hidden[::8] = 0  # pad positions: uniform rows, label 0
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 2 / h**0.5
    labels = torch.randint(v, (n,), generator=gen)
    if padded:
        labels[::8] = 0
    grads = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return hidden.to(dtype), weight.to(dtype), labels, grads


def reference(hidden, weight, labels, temperature, grads):
    """(log p, H, dhidden, dweight) in float64 through autograd."""
    return float64_linear_logprobs(hidden, weight, labels, temperature, *grads)


def fused(hidden, weight, labels, temperature, grads, **kwargs):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, entropy = linear_logprobs_and_entropy(h, w, labels, temperature, **kwargs)
    ((lp * grads[0]).sum() + (entropy * grads[1]).sum()).backward()
    return lp, entropy, h.grad, w.grad


def assert_close(got, want, tol):
    names = ("logprobs", "entropy", "dhidden", "dweight")
    errors = {name: relative_error(g, w) for name, g, w in zip(names, got, want)}
    assert all(e < tol for e in errors.values()), errors


def random_shape(seed):
    """N in 1…2048, H in 16…896 (log-uniform), V as large as a quick float64 reference affords."""
    rng = random.Random(seed)
    n = round(2 ** rng.uniform(0, 11))
    h = round(2 ** rng.uniform(4, 9.81))
    v = max(2, min(151_936, 2_000_000 // n, 3_000_000 // h, 100_000_000 // (n * h)))
    return n, h, v


CASES = [
    # n, h, v, chunk_tokens, temperature
    (1, 896, 5_000, "auto", 1.0),
    (3, 16, 151_936, "auto", 0.8),  # Qwen2.5's padded vocabulary
    (3, 16, 151_665, 2, 1.0),  # and its real one
    (2048, 16, 1_000, 300, 0.7),  # 300 does not divide 2048
    (512, 128, 4_096, 128, 1.3),  # 128 does
    (700, 896, 1_024, 256, 0.6),
    *[(*random_shape(seed), 97, 1.0 + 0.2 * seed) for seed in range(4)],
]


@pytest.mark.parametrize("n, h, v, chunk, temperature", CASES)
def test_torch_path_matches_float64(n, h, v, chunk, temperature):
    hidden, weight, labels, grads = make_inputs(n, h, v, seed=n + h + v, padded=n >= 16)
    got = fused(hidden, weight, labels, temperature, grads, chunk_tokens=chunk)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == torch.float32
    assert_close(got, reference(hidden, weight, labels, temperature, grads), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, h, v, chunk", [(37, 32, 300, 16), (130, 64, 1_500, 64)])
def test_triton_backend_matches_float64(dtype, n, h, v, chunk):
    hidden, weight, labels, grads = make_inputs(n, h, v, dtype, seed=v)
    got = fused(hidden, weight, labels, 0.9, grads, chunk_tokens=chunk, backend="triton")
    assert got[2].dtype == got[3].dtype == dtype
    assert_close(got, reference(hidden, weight, labels, 0.9, grads), TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunk_size_does_not_change_the_result(backend):
    hidden, weight, labels, grads = make_inputs(12, 24, 333, seed=5)
    whole = fused(hidden, weight, labels, 1.1, grads, chunk_tokens=12, backend=backend)
    for chunk in (1, 5, 64):
        got = fused(hidden, weight, labels, 1.1, grads, chunk_tokens=chunk, backend=backend)
        assert all(relative_error(g, w.double()) < 1e-6 for g, w in zip(got, whole))


def test_equals_the_unfused_reference():
    hidden, weight, labels, _ = make_inputs(40, 32, 500, seed=6)
    got = linear_logprobs_and_entropy(hidden, weight, labels, 0.7, chunk_tokens=16)
    want = linear_logprobs_and_entropy_reference(hidden, weight, labels, 0.7)
    assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_tokens(backend):
    hidden, weight, labels, grads = make_inputs(0, 16, 100)
    lp, entropy, dhidden, dweight = fused(hidden, weight, labels, 1.0, grads, backend=backend)
    assert lp.shape == entropy.shape == (0,) and dhidden.shape == (0, 16)
    assert dweight.shape == (100, 16) and not dweight.any()


def test_gradient_only_where_asked():
    """A frozen weight (or hidden states that need no gradient) skip that product; no_grad keeps no graph."""
    hidden, weight, labels, grads = make_inputs(30, 16, 200, seed=7)
    _, _, want_dhidden, want_dweight = reference(hidden, weight, labels, 1.0, grads)
    for needs in ("hidden", "weight"):
        h = hidden.clone().requires_grad_(needs == "hidden")
        w = weight.clone().requires_grad_(needs == "weight")
        lp, entropy = linear_logprobs_and_entropy(h, w, labels, chunk_tokens=8)
        ((lp * grads[0]).sum() + (entropy * grads[1]).sum()).backward()
        got, want, other = (h, want_dhidden, w) if needs == "hidden" else (w, want_dweight, h)
        assert relative_error(got.grad, want) < 1e-5 and other.grad is None
    with torch.no_grad():
        lp, _ = linear_logprobs_and_entropy(hidden.requires_grad_(True), weight, labels)
    assert lp.grad_fn is None


@pytest.mark.parametrize("tied", [True, False])
def test_tied_embeddings_get_the_gradient_of_both_uses(tied):
    """A tiny Qwen2 whose lm_head is (or is not) its embedding: hidden states at the response
    positions from the decoder body, `weight = lm_head.weight`; every parameter's gradient equals
    the unfused path's (full logits, float64)."""
    from tinyzero.models.tiny import build_tiny_model

    model = build_tiny_model(300, 0, hidden_size=32, num_layers=2, intermediate_size=64, tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    model64 = copy.deepcopy(model).double()
    input_ids = torch.randint(300, (2, 12))
    prompt = 5
    labels = input_ids[:, prompt:].reshape(-1)

    hidden = model.model(input_ids=input_ids).last_hidden_state[:, prompt - 1 : -1].reshape(-1, 32)
    lp, entropy = linear_logprobs_and_entropy(hidden, model.lm_head.weight, labels, 0.8, chunk_tokens=5)
    (lp.sum() + 0.1 * entropy.sum()).backward()

    logits = model64(input_ids=input_ids).logits[:, prompt - 1 : -1].reshape(-1, 300)
    log_p = torch.log_softmax(logits / 0.8, dim=-1)
    want_entropy = -(log_p.exp() * log_p).sum(-1)
    (log_p.gather(1, labels[:, None]).sum() + 0.1 * want_entropy.sum()).backward()

    assert relative_error(entropy, want_entropy.detach()) < 1e-5
    for (name, p), p64 in zip(model.named_parameters(), model64.parameters()):
        assert relative_error(p.grad, p64.grad) < 1e-5, name


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op (forward or backward) produced."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("n", [128, 512])
def test_memory_grows_with_the_chunk_not_the_tokens(n):
    """The largest tensor of forward + backward is one chunk's logits [C, V], whatever N; the
    backward keeps per-token vectors, hidden and weight, never logits."""
    v, h, chunk = 2_000, 8, 64
    hidden, weight, labels, grads = make_inputs(n, h, v)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        with LargestTensor() as mode:
            fused(hidden, weight, labels, 1.0, grads, chunk_tokens=chunk)
    assert mode.numel == chunk * v
    assert max(saved) == max(n * h, v * h) < n * v


def test_auto_chunk_tokens():
    assert auto_chunk_tokens(151_936, torch.bfloat16) == 1664  # ⌊512 MiB / (V·2)⌋ = 1766, whole tiles
    assert auto_chunk_tokens(151_936, torch.float32) == 768
    assert auto_chunk_tokens(1_000, torch.float32, budget_bytes=100 * 4_000) == 100
    assert auto_chunk_tokens(151_936, torch.float32, budget_bytes=1) == 1
    hidden, weight, labels, _ = make_inputs(3, 16, 151_936)
    assert linear_logprobs_and_entropy(hidden, weight, labels)[0].shape == (3,)


def bad_inputs():
    hidden, weight, labels, _ = make_inputs(4, 8, 10)
    return {"hidden": hidden, "weight": weight, "labels": labels}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden": torch.randn(4, 8, 1)}, "hidden must be"),
        ({"weight": torch.randn(10, 9)}, "weight must be"),
        ({"weight": torch.randn(10, 8, dtype=torch.bfloat16)}, "one dtype"),
        ({"hidden": torch.randn(4, 8).double(), "weight": torch.randn(10, 8).double()}, "one dtype"),
        ({"labels": torch.zeros(4, dtype=torch.int32)}, "labels must be int64"),
        ({"labels": torch.zeros(5, dtype=torch.long)}, "labels must be int64"),
        ({"labels": torch.tensor([0, 1, 10, 2])}, r"labels must lie in \[0, V\)"),
        ({"labels": torch.tensor([0, -1, 3, 2])}, r"labels must lie in \[0, V\)"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"chunk_tokens": 2.5}, "chunk_tokens"),
        ({"chunk_tokens": "big"}, "chunk_tokens"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_bad_inputs_raise(change, match):
    with pytest.raises(ValueError, match=match):
        linear_logprobs_and_entropy(**{**bad_inputs(), **change})


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs"):
        linear_logprobs_and_entropy(**bad_inputs(), backend="triton")


def test_a_sharded_weight_is_refused():
    """Under FSDP2 the caller must pass the unsharded weight (read inside the root's forward)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        inputs = bad_inputs()
        inputs["weight"] = distribute_tensor(inputs["weight"], init_device_mesh("cpu", (1,)), [Shard(0)])
        with pytest.raises(ValueError, match="sharded DTensor"):
            linear_logprobs_and_entropy(**inputs)
    finally:
        dist.destroy_process_group()
