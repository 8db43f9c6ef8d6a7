"""Training glue: building a run from its config, callbacks, checkpoints, the run's log, the memory plan."""
