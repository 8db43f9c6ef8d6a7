"""The fused log-prob + entropy kernel under TRITON_INTERPRET=1 against float64 references."""

import pytest
import torch
from references import float64_logprobs as reference  # log p, H, d/dlogits in float64
from tinyzero.kernels.logprobs import logprobs_and_entropy, logprobs_and_entropy_reference, logprobs_entropy_forward
from tolerances import assert_within, logprob_bounds


def assert_close(lp, h, grad, want, bounds):
    """log p, H and d/dlogits each within its rounding bound (`logprob_bounds`)."""
    for name, got, expected in zip(("logprobs", "entropy", "dlogits"), (lp, h, grad), want):
        assert_within(got, expected, bounds[name], name)


def test_eager_reference_agrees_with_float64():
    logits = make_logits(50, 777, torch.float32, seed=3)
    labels = torch.isfinite(logits).float().argmax(-1)
    lp, h = logprobs_and_entropy_reference(logits, labels, 0.9)
    want_lp, want_h, _ = reference(logits, labels, 0.9, torch.zeros(50), torch.zeros(50))
    bounds = logprob_bounds(torch.float32, 777)
    assert_within(lp, want_lp, bounds["logprobs"], "logprobs")
    assert_within(h, want_h, bounds["entropy"], "entropy")


def make_logits(n, v, dtype, seed, neg_inf=True, strided=False):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, v + (37 if strided else 0), generator=gen, dtype=torch.float64) * 3
    if neg_inf:
        base[0, : v // 2] = float("-inf")  # half a row masked out
        base[1, torch.randint(v, (v // 10,), generator=gen)] = float("-inf")
    logits = base.to(dtype)
    return logits[:, :v] if strided else logits  # a row stride larger than V


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 1024, 3001])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_forward_and_gradients_match_float64(dtype, vocab, temperature):
    n = 70
    seed = vocab * 7 + int(temperature * 10)
    logits = make_logits(n, vocab, dtype, seed, neg_inf=vocab > 2, strided=vocab == 1000)
    gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(vocab, (n,), generator=gen)
    if vocab > 2:
        # labels on finite logits: log p(label) = −inf has no meaningful gradient to compare
        for row in (0, 1):
            labels[row] = torch.isfinite(logits[row]).nonzero()[-1, 0]
    grad_lp, grad_h = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    want = reference(logits, labels, temperature, grad_lp, grad_h)

    x = logits.detach().clone().requires_grad_(True)
    lp, h = logprobs_and_entropy(x, labels, temperature)
    ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
    assert lp.dtype == h.dtype == torch.float32
    finite = torch.isfinite(logits)
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~finite] == 0).all()
    assert_close(lp, h, x.grad, want, logprob_bounds(dtype, vocab))


def test_outputs_are_fully_written():
    torch.manual_seed(0)
    logits, labels = torch.randn(130, 515), torch.randint(515, (130,))
    poisoned = [torch.full((130,), float("nan")) for _ in range(3)]
    outputs = logprobs_entropy_forward(logits, labels, out=poisoned)
    assert all(o is p for o, p in zip(outputs, poisoned))
    assert all(torch.isfinite(o).all() for o in outputs)


def test_backward_into_a_nan_buffer_writes_every_element():
    from tinyzero.kernels.logprobs import logprobs_entropy_backward

    torch.manual_seed(1)
    logits, labels = torch.randn(65, 300), torch.randint(300, (65,))
    _, entropy, lse = logprobs_entropy_forward(logits, labels)
    out = torch.full_like(logits, float("nan"))
    logprobs_entropy_backward(logits, labels, lse, entropy, torch.ones(65), torch.ones(65), out=out)
    assert torch.isfinite(out).all()


def test_inplace_backward_writes_the_gradient_into_the_logits_buffer():
    torch.manual_seed(2)
    logits = torch.randn(20, 99)
    labels = torch.randint(99, (20,))
    _, _, want = reference(logits, labels, 1.0, torch.ones(20), torch.zeros(20))
    buffer = logits.clone().requires_grad_(True)
    lp, _ = logprobs_and_entropy(buffer * 1.0, labels, inplace_backward=True)
    lp.sum().backward()
    assert_within(buffer.grad, want, logprob_bounds(torch.float32, 99)["dlogits"], "dlogits")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"logits \[N, V\]"):
        logprobs_and_entropy(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        logprobs_and_entropy(torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("vocab", [151_936, 151_665])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen_vocabulary_sizes(vocab, dtype):
    """Qwen2.5's padded (151 936) and real (151 665) vocabularies: neither a multiple of BLOCK_V."""
    n = 3
    logits = make_logits(n, vocab, dtype, seed=vocab)
    labels = torch.tensor([vocab - 1, 0, vocab // 3])
    grad_lp, grad_h = torch.ones(n), torch.full((n,), 0.5)
    want = reference(logits, labels, 0.8, grad_lp, grad_h)
    x = logits.detach().clone().requires_grad_(True)
    lp, h = logprobs_and_entropy(x, labels, 0.8)
    ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
    assert_close(lp, h, x.grad, want, logprob_bounds(dtype, vocab))
