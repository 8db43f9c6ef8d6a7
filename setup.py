from setuptools import find_packages, setup

setup(
    name="tinyzero",
    version="0.1.0",
    description="R1-Zero style RL (PPO/GRPO) on small models with PyTorch Lightning",
    python_requires=">=3.10",
    packages=find_packages(include=["tinyzero", "tinyzero.*"]) + ["tinyzero.kernels"],
    # kernels/ installs as tinyzero.kernels: a top-level `kernels` would shadow the
    # Hugging Face `kernels` package that transformers probes for.
    package_dir={"tinyzero.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        # vLLM 0.33 pins transformers<5.21; the base range must resolve beside the gpu extra.
        "transformers>=4.56,<5.21",
        "tokenizers>=0.21",
        "safetensors",
        "lightning>=2.5",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "pyarrow>=15",
        "datasets>=3.0",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # triton: the kernels' compiler, which a CUDA torch brings itself; on a CPU its interpreter
        # runs the kernel tests, so it is a test dependency there (1 GB, no wheels off Linux)
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3",
            "hypothesis>=6",
            "ruff",
            "triton>=3.2; platform_system == 'Linux'",
            "peft>=0.17",  # the LoRA tests
        ],
        "lora": ["peft>=0.17"],  # model.lora.rank > 0
        "gpu": ["vllm>=0.33,<0.34"],
        "flash": ["flash-attn>=2.7"],
        "wandb": ["wandb"],
        "slurm": ["hydra-submitit-launcher"],
    },
)
