"""Prompt data: the task's problems written as parquet files, and the datamodule that serves them."""
