"""User-facing errors and the one-line, non-zero-exit handling every entry point shares."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("nas")


class UserError(Exception):
    """Bad input from the user (a file, a config value, a dataset). Reported as one line, exit code 2."""


def run_cli(main: Callable[[], T]) -> T:
    """Run an entry point; a `UserError` becomes one `error: ...` line on stderr and exit status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
