"""R1-Zero style RL (PPO / GRPO) on small models with PyTorch Lightning."""

from omegaconf import OmegaConf

# conf/ multiplies sizes (FSDP2's data-parallel size = devices per node × nodes)
OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)
