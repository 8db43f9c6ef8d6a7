"""After (or beside) training: held-out evaluation, plots, run comparison, sweep summaries."""
