"""Mistakes an operator can fix, raised by the ops modules and printed by the `outbox` command as one line
(exit 2) naming the fix, instead of a traceback."""

from __future__ import annotations


class OperatorError(Exception):
    """A wrong name, setting or input: the message says what to use instead."""

    exit_code = 2
