"""The one-line, non-zero-exit handling every entry point shares."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from supernet.errors import UserError

T = TypeVar("T")
log = logging.getLogger("nas")


def run_cli(main: Callable[[], T]) -> T:
    """Run an entry point; a `UserError` becomes one `error: ...` line on stderr and exit status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
