"""The RL core: advantage estimators and losses as pure tensor functions, experience, micro-batching,
and the LightningModule."""
