import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    kernel names what it needs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # as if not installed
        "import kernels, tinyzero.kernels\n"
        "from transformers.models.qwen2 import modeling_qwen2\n"
        "assert getattr(kernels, '__version__', 'absent') == 'absent'\n"
        "try:\n"
        "    from tinyzero.kernels import gae\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = run(code, ROOT)
    assert result.returncode == 0, result.stderr
    assert "tinyzero.kernels.gae needs triton" in result.stdout
