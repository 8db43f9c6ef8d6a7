import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT as CHECKOUT
from tolerances import logprob_bounds

ROOT = Path(CHECKOUT)
OFFLINE_INSTALL = "pip install --no-deps --no-build-isolation --no-index -e ."  # README's Install


def run(code, cwd):
    # run outside the checkout, as an installed user would: the repo root is not on sys.path
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_kernels_installs_as_tinyzero_kernels(tmp_path):
    result = run("import tinyzero.kernels, importlib.util; print(importlib.util.find_spec('kernels'))", tmp_path)
    assert result.returncode == 0, result.stderr
    # no top-level `kernels` module of ours that transformers would mistake for HF kernels
    assert result.stdout.strip() == "None"


def test_transformers_import_is_not_disturbed(tmp_path):
    result = run(
        "import tinyzero.kernels, transformers; from transformers import AutoModelForCausalLM; print('ok')", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_package_level_kernel_exports(tmp_path):
    code = (
        "import tinyzero.kernels as k\n"
        "from tinyzero.kernels import logprobs_and_entropy, gae, linear_logprobs_and_entropy\n"
        "import sys\n"
        "assert logprobs_and_entropy is sys.modules['tinyzero.kernels.logprobs'].logprobs_and_entropy\n"
        "assert gae is sys.modules['tinyzero.kernels.gae'].gae and callable(linear_logprobs_and_entropy)\n"
        "print(sorted(k.__all__))"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['gae', 'linear_logprobs_and_entropy', 'logprobs_and_entropy']"


def test_without_triton_the_package_and_transformers_still_import_from_the_checkout():
    """`make demo` installs no triton: from the repo root (where `kernels/` shadows the HF package
    transformers probes with getattr(kernels, "__version__", ...)) the model code imports, and a
    kernel launch names what it needs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # as if not installed
        "import kernels, tinyzero.kernels, torch\n"
        "from transformers.models.qwen2 import modeling_qwen2\n"
        "assert getattr(kernels, '__version__', 'absent') == 'absent'\n"
        "try:\n"
        "    tinyzero.kernels.gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.0, 1.0)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = run(code, ROOT)
    assert result.returncode == 0, result.stderr
    assert "the Triton kernels need triton" in result.stdout


def test_without_triton_the_backend_switch_runs_the_torch_references(tmp_path):
    """`tinyzero.kernels.backend` and what imports it (the RL core, build) import without triton;
    `auto` answers `torch` even on CUDA, and each op runs its torch reference."""
    # the chunked and the unfused entropy, two float32 paths over an 11-token vocabulary from 8-wide hidden states
    entropy_bound = 2 * logprob_bounds(torch.float32, vocab=11, hidden=8)["entropy"]
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from tinyzero.kernels.backend import gae, logprobs_and_entropy, resolve_backend\n"
        "from tinyzero.kernels.gae import gae_reference\n"
        "from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy\n"
        "from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy_reference as unfused\n"
        "import tinyzero.ppo.advantages, tinyzero.ppo.logprobs, tinyzero.train.build\n"
        "backend, reason = resolve_backend('auto', 'cuda')\n"
        "assert backend == 'torch' and 'not installed' in reason, reason\n"
        "inputs = torch.randn(3, 9), torch.randn(3, 9), (torch.rand(3, 9) > 0.3).float()\n"
        "got, want = gae(*inputs, 0.99, 0.95, backend), gae_reference(*inputs, 0.99, 0.95)\n"
        "assert all(torch.equal(a, b) for a, b in zip(got, want))\n"
        "hidden, weight, labels = torch.randn(6, 8), torch.randn(11, 8), torch.randint(11, (6,))\n"
        "logprobs, entropy = logprobs_and_entropy(hidden @ weight.T, labels, 0.9, backend)\n"
        "assert torch.equal(logprobs, unfused(hidden, weight, labels, 0.9)[0])\n"
        "chunked = linear_logprobs_and_entropy(hidden, weight, labels, 0.9, chunk_tokens=4, backend=backend)\n"
        "error = ((chunked[1] - entropy).abs().max() / entropy.abs().max()).item()\n"
        f"assert error <= {entropy_bound!r}, error\n"
        "print('ok')\n"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_fresh_clone_installs_offline_with_readmes_line(tmp_path):
    """README's offline line in a fresh `git clone`, in a new venv that sees this environment's
    packages and nothing of this checkout; then the package imports from a folder outside the clone.

    A venv made from a venv's python with `--system-site-packages` would see the base interpreter's
    packages, not this environment's: a `.pth` file lists this interpreter's site-packages folders
    instead (its `.pth` files unread there: no editable install of this checkout). The proxies point
    at a closed port, so any download would fail."""
    assert OFFLINE_INSTALL in (ROOT / "README.md").read_text()
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone, venv = tmp_path / "clone", tmp_path / "venv"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    site_packages = Path(subprocess.run(purelib, capture_output=True, text=True, check=True).stdout.strip())
    folders = [path for path in sys.path if path.endswith(("site-packages", "dist-packages"))]
    (site_packages / "dependencies.pth").write_text("".join(f"{folder}\n" for folder in folders))
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "PIP_CONFIG_FILE": os.devnull}
    _pip, *arguments = shlex.split(OFFLINE_INSTALL)
    install = subprocess.run(
        [python, "-m", "pip", *arguments], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stdout + install.stderr
    code = "import tinyzero.kernels.backend as b, tinyzero.train.build as t; print(b.__file__); print(t.__file__)"
    result = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(clone / "kernels/backend.py"), str(clone / "tinyzero/train/build.py")]
