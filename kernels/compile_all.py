"""Compile every Triton kernel of `tinyzero.kernels` for real GPU targets, no GPU needed.

The interpreter (`TRITON_INTERPRET=1`, how the kernels are tested on CPU) accepts code that the
compiler refuses (a non-constexpr global, for one), so each kernel configuration a GPU launch can
pick is also run through Triton's whole pipeline here: ttir → ttgir → llir → PTX → cubin, with the
`ptxas` inside the triton wheel; `cuobjdump` then reads registers, spills and shared memory.

    python -m tinyzero.kernels.compile_all            # sm_80 and sm_90: a table, exit 1 on any failure
    python -m tinyzero.kernels.compile_all --json F   # the rows as JSON too

Each kernel module lists its configurations in `compile_configurations()` (kernel, signature,
constexprs, launch options such as `num_warps`); kernels are the
`@triton.jit` functions named `*_kernel` (helpers they call are compiled with them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ARCHS = (80, 90)


def signature(fn, constexprs: dict, **types: str) -> dict[str, str]:
    """Triton's signature of `fn`: `*fp32` for a `*_ptr` argument and `i32` for any other, unless
    `types` says otherwise; `constexpr` for the names in `constexprs`."""
    default = {True: "*fp32", False: "i32"}
    return {
        name: "constexpr" if name in constexprs else types.get(name, default[name.endswith("_ptr")])
        for name in fn.arg_names
    }


def kernel_modules() -> list:
    """The package's modules, this one aside."""
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")]
    return [importlib.import_module(f"{__package__}.{name}") for name in names if name != "compile_all"]


def launched_kernels(module) -> set[str]:
    from triton.runtime.jit import JITFunction

    return {name for name, value in vars(module).items() if isinstance(value, JITFunction) and name.endswith("_kernel")}


def cubin_usage(cubin: bytes) -> dict[str, int]:
    """Registers, local memory (spills and stack) and shared memory of a cubin, as `cuobjdump
    -res-usage` (shipped in the triton wheel) reads them."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[1]))
    return {
        "registers": int(usage["REG"]),
        "local_bytes": int(usage["LOCAL"]) + int(usage["STACK"]),
        "shared_bytes": int(usage["SHARED"]),
    }


def compile_one(fn, sig: dict, constexprs: dict, options: dict, arch: int) -> dict:
    """Compile one configuration for `sm_<arch>`; the row says what it needed or why it failed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointer_types = ",".join(f"{k}={v}" for k, v in sig.items() if v.startswith("*"))
    row = {
        "kernel": fn.__name__,
        "arch": f"sm_{arch}",
        "constexprs": {**constexprs, **options},
        "pointers": pointer_types,
    }
    start = time.perf_counter()
    try:
        indexed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
        compiled = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=indexed), target=GPUTarget("cuda", arch, 32), options=options
        )
        if not compiled.asm.get("cubin"):
            raise RuntimeError("no cubin produced")
        row.update(ok=True, **cubin_usage(compiled.asm["cubin"]))
    except Exception as error:  # noqa: BLE001 - every failure becomes a row; the exit status reports it
        row.update(ok=False, error=f"{type(error).__name__}: {error}".strip()[:2000], trace=traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def compile_all(archs=ARCHS) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: under the interpreter @triton.jit builds no compilable kernel")
    rows = []
    for module in kernel_modules():
        # a module without kernels of its own (it launches others') needs no configurations
        configurations = list(getattr(module, "compile_configurations", tuple)())
        missing = launched_kernels(module) - {configuration[0].__name__ for configuration in configurations}
        if missing:
            raise RuntimeError(f"{module.__name__}.compile_configurations() leaves out {sorted(missing)}")
        rows += [compile_one(*configuration, arch) for configuration in configurations for arch in archs]
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<18} {'arch':<6} {'constexprs':<40} {'pointers':<44} {'regs':>5} {'local':>6} {'smem':>6}"]
    for r in rows:
        usage = (
            f"{r['registers']:>5} {r['local_bytes']:>6} {r['shared_bytes']:>6}"
            if r["ok"]
            else "FAILED: " + r["error"].splitlines()[0]
        )
        constexprs = ",".join(f"{k}={v}" for k, v in r["constexprs"].items())
        pointers = ",".join(p.split("=")[1] for p in r["pointers"].split(","))
        lines.append(f"{r['kernel']:<18} {r['arch']:<6} {constexprs:<40} {pointers:<44} {usage}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (80 90)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"\n{r['kernel']} {r['arch']} {r['constexprs']}:\n{r['trace']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} of {len(rows)} kernel configurations compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
