"""The one error type for a user's mistake: a config key, a missing optional package, a bad file."""

from __future__ import annotations

import os
import sys


class ConfigError(ValueError):
    """What the user changes to go on is in the message, so the scripts print the message alone,
    once, without a traceback (`HYDRA_FULL_ERROR=1` shows it), and exit with status 2."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder the command names, or needs, is not there."""


def config_error_behind(err: BaseException | None) -> ConfigError | None:
    """The ConfigError that `err` is or wraps (Hydra's `instantiate` wraps a constructor's)."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__ or err.__context__
    return err


def report_config_error(err: BaseException) -> ConfigError:
    """Print a user's mistake as its message alone, once; re-raise anything else, and everything
    under `HYDRA_FULL_ERROR=1`. Returns the ConfigError, for the caller to exit or record."""
    found = config_error_behind(err)
    if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {found}", file=sys.stderr)
    return found
