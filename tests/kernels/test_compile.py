"""Every Triton kernel compiled by Triton's real compiler for sm_80 and sm_90, no GPU needed.

The kernel tests run under TRITON_INTERPRET=1, which accepts code the compiler refuses (a
non-constexpr global made every CUDA run with the Triton backend fail at its first log-prob), so
these tests compile in a subprocess without the interpreter, to PTX and a cubin.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest


def compiler_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")  # a fresh cache: every kernel really compiles
    return env


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compile")
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, "-m", "tinyzero.kernels.compile_all", "--arch", "80", "90", "--json", str(out)],
        env=compiler_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    return result, json.loads(out.read_text())


def test_every_kernel_configuration_compiles_for_sm80_and_sm90(compiled):
    result, rows = compiled
    failed = [f"{r['kernel']} {r['arch']} {r['constexprs']}: {r['error']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed) + "\n" + result.stderr[-4000:]
    assert result.returncode == 0
    for r in rows:
        assert r["registers"] > 0 and r["local_bytes"] >= 0 and r["shared_bytes"] >= 0


def test_each_dispatch_choice_is_covered(compiled):
    """Each kernel, each logits dtype, each block the launchers can pick, on both targets."""
    _, rows = compiled
    seen = {(r["kernel"], r["arch"], r["pointers"].split(",")[0], tuple(sorted(r["constexprs"].items()))) for r in rows}
    from tinyzero.kernels.gae import MAX_BLOCK_T
    from tinyzero.kernels.logprobs import GPU_BLOCK_V

    for arch in ("sm_80", "sm_90"):
        for kernel in ("_forward_kernel", "_backward_kernel"):
            for dtype in ("fp32", "bf16", "fp16"):
                for block_v in GPU_BLOCK_V:
                    key = (kernel, arch, f"logits_ptr=*{dtype}", (("BLOCK_V", block_v), ("ROWS_PER_PROGRAM", 1)))
                    assert key in seen, key
        gae_blocks = {dict(c)["BLOCK_T"] for k, a, _, c in seen if k == "_gae_kernel" and a == arch}
        assert gae_blocks == {2**i for i in range(MAX_BLOCK_T.bit_length())}


def test_the_check_catches_a_non_constexpr_global(tmp_path):
    """The error that reached a real GPU: the interpreter runs this kernel, the compiler refuses it."""
    module = tmp_path / "bad_kernel.py"
    module.write_text(
        textwrap.dedent(
            """
            import triton
            import triton.language as tl

            FLOOR = -1.0e30

            @triton.jit
            def bad_kernel(out_ptr, BLOCK: tl.constexpr):
                tl.store(out_ptr + tl.arange(0, BLOCK), tl.full([BLOCK], FLOOR, tl.float32))
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from bad_kernel import bad_kernel
        from tinyzero.kernels.compile_all import compile_one, signature
        print(json.dumps(compile_one(bad_kernel, signature(bad_kernel, {{"BLOCK": 16}}), {{"BLOCK": 16}}, {{}}, 90)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=compiler_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert not row["ok"]
    assert "FLOOR" in row["error"] and "constexpr" in row["error"]
