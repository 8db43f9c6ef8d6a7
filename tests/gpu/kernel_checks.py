"""Stage a: every kernel against float64 (`tests/references.py`) on fresh random inputs, written
into NaN-poisoned outputs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from references import float64_gae, float64_linear_logprobs, float64_logprobs
from tinyzero.kernels.gae import gae
from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy
from tinyzero.kernels.logprobs import logprobs_and_entropy, logprobs_entropy_forward
from tolerances import relative_error

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def check_logprobs(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    shapes = [(70, 1000), (3, 3001)] if small else [(1, 1000), (77, 3001), (333, 151_936), (4096, 151_936)]
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for n, vocab in shapes:
            for temperature in (0.7, 1.0, 1.3):
                # strided rows (a view of a wider buffer), half of row 0 and a tenth of row 1 at −inf
                base = torch.randn(n, vocab + 37, generator=gen, device=device) * 3
                logits = base.to(dtype)[:, :vocab]
                logits[0, : vocab // 2] = float("-inf")
                if n > 1:
                    logits[1, torch.randint(vocab, (vocab // 10,), generator=gen, device=device)] = float("-inf")
                labels = torch.randint(vocab, (n,), generator=gen, device=device)
                labels[0] = vocab - 1
                if n > 1:
                    labels[1] = torch.isfinite(logits[1]).nonzero()[-1, 0]
                grad_lp = torch.randn(n, generator=gen, device=device)
                grad_h = torch.randn(n, generator=gen, device=device)
                want_lp, want_h, want_grad = float64_logprobs(logits, labels, temperature, grad_lp, grad_h)
                poisoned = [torch.full((n,), float("nan"), device=device) for _ in range(3)]
                forward = logprobs_entropy_forward(logits, labels, temperature, out=poisoned)
                x = logits.detach().clone().requires_grad_(True)
                lp, h = logprobs_and_entropy(x, labels, temperature)
                ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
                errors = {
                    "logprobs": relative_error(lp, want_lp),
                    "entropy": relative_error(h, want_h),
                    "grad": relative_error(x.grad, want_grad),
                }
                written = all(torch.isfinite(o).all().item() for o in forward) and bool(torch.isfinite(x.grad).all())
                tol = TOLERANCE[dtype]
                rows.append(
                    {
                        "kernel": "logprobs+entropy",
                        "case": f"{str(dtype)[6:]} N={n} V={vocab} T={temperature}",
                        "max_rel_error": max(errors.values()),
                        "ok": written
                        and errors["logprobs"] < tol
                        and errors["entropy"] < max(tol, 1e-5)
                        and errors["grad"] < tol,
                    }
                )
    return rows


def check_gae(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    shapes = [(65, 130), (3, 17)] if small else [(3, 17), (130, 1000), (1024, 4096)]
    rows = []
    for batch, steps in shapes:
        for gamma, lam in ((1.0, 1.0), (0.99, 0.95)):
            lengths = torch.randint(0, steps + 1, (batch,), generator=gen, device=device)
            lengths[0] = steps
            mask = (torch.arange(steps, device=device)[None] < lengths[:, None]).float()
            rewards = torch.randn(batch, steps, generator=gen, device=device)
            values = torch.randn(batch, steps, generator=gen, device=device)
            want_adv, want_ret = float64_gae(rewards, values, mask, gamma, lam)
            out = (torch.full_like(rewards, float("nan")), torch.full_like(rewards, float("nan")))
            adv, ret = gae(rewards, values, mask, gamma, lam, out=out)
            # an absolute scale: with γλ = 1 the advantages are sums of up to T terms
            scale = max(1.0, want_adv.abs().max().item())
            error = max((adv.double() - want_adv).abs().max().item(), (ret.double() - want_ret).abs().max().item())
            rows.append(
                {
                    "kernel": "gae",
                    "case": f"B={batch} T={steps} gamma={gamma} lam={lam}",
                    "max_rel_error": error / scale,
                    "ok": bool(torch.isfinite(adv).all() and torch.isfinite(ret).all()) and error / scale < 1e-5,
                }
            )
    return rows


def check_linear_logprobs(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    shapes = [(40, 32, 300)] if small else [(1000, 1536, 151_936), (3, 64, 151_936)]
    rows = []
    for n, hidden_size, vocab in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            hidden = (torch.randn(n, hidden_size, generator=gen, device=device) / hidden_size**0.5).to(dtype)
            weight = torch.randn(vocab, hidden_size, generator=gen, device=device).to(dtype)
            labels = torch.randint(vocab, (n,), generator=gen, device=device)
            grad_lp = torch.randn(n, generator=gen, device=device)
            grad_h = torch.randn(n, generator=gen, device=device)
            want = float64_linear_logprobs(hidden, weight, labels, 0.9, grad_lp, grad_h)
            x = hidden.detach().clone().requires_grad_(True)
            w = weight.detach().clone().requires_grad_(True)
            lp, h = linear_logprobs_and_entropy(x, w, labels, temperature=0.9, backend="triton")
            ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
            errors = [relative_error(got, expected) for got, expected in zip((lp, h, x.grad, w.grad), want)]
            # float32 matmuls on a GPU use TF32 unless told otherwise: 1e-3 there, bf16 inputs 2e-2
            tol = 2e-2 if dtype == torch.bfloat16 else (1e-5 if device == "cpu" else 1e-3)
            rows.append(
                {
                    "kernel": "linear logprobs+entropy",
                    "case": f"{str(dtype)[6:]} N={n} H={hidden_size} V={vocab}",
                    "max_rel_error": max(errors),
                    "ok": max(errors) < tol,
                }
            )
    return rows


def stage_kernels(out: Path, small: bool) -> tuple[list[dict], bool]:
    device = "cpu" if small else "cuda"
    gen = torch.Generator(device).manual_seed(time.time_ns() % 2**63)  # fresh inputs on every run
    rows = []
    for check in (check_logprobs, check_gae, check_linear_logprobs):
        try:
            rows += check(device, small, gen)
        except Exception as error:  # noqa: BLE001 - a failing kernel is a row, the others still run
            rows.append({"kernel": check.__name__, "case": "raised", "error": repr(error)[:500], "ok": False})
    return rows, all(r["ok"] for r in rows)
