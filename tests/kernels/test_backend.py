"""`kernels.backend`: what `auto` picks on each device, and what every recipe asks for."""

import glob
import os

import pytest
import torch
from conftest import ROOT
from tinyzero.kernels.backend import resolve_backend


def test_auto_is_triton_on_cuda_and_torch_on_cpu(monkeypatch):
    backend, reason = resolve_backend("auto", torch.device("cuda", 0))
    assert (backend, reason) == ("triton", "kernels.backend=auto on CUDA")
    # even under the interpreter (these tests run there) auto keeps CPU tensors on the reference
    assert os.environ.get("TRITON_INTERPRET") == "1"
    backend, reason = resolve_backend("auto", "cpu")
    assert backend == "torch" and "cpu" in reason
    assert resolve_backend("triton", "cpu")[0] == "triton"  # forced: the interpreter runs it
    monkeypatch.delenv("TRITON_INTERPRET")
    assert resolve_backend("triton", "cpu")[0] == "torch"


def test_auto_without_triton_is_torch_everywhere(monkeypatch):
    import tinyzero.kernels.backend as backend

    monkeypatch.setattr(backend, "triton_available", lambda: False)
    backend, reason = resolve_backend("auto", "cuda")
    assert backend == "torch" and "not installed" in reason


def test_forced_torch_and_bad_names():
    assert resolve_backend("torch", "cuda") == ("torch", "kernels.backend=torch")
    with pytest.raises(ValueError, match=r"kernels.backend must be one of \['auto', 'torch', 'triton'\]"):
        resolve_backend("cuda", "cuda")


def test_every_recipe_resolves_to_auto():
    from hydra import compose, initialize_config_dir

    recipes = sorted(os.path.basename(p)[:-5] for p in glob.glob(f"{ROOT}/conf/experiment/*.yaml"))
    assert "countdown_3b" in recipes
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        for recipe in recipes:
            assert compose(config_name="train", overrides=[f"experiment={recipe}"]).kernels.backend == "auto", recipe
