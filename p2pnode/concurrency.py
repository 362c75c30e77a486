"""Helpers that keep trio's exception groups from leaking into domain error handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


@contextmanager
def collapse_groups() -> Iterator[None]:
    """Re-raise a nursery's first real failure as itself, so callers catch domain errors by type.

    When one child fails, trio cancels its siblings; the group then holds that one error plus
    `Cancelled`s, and the error is what the caller needs to see. Pure cancellation stays as is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        for leaf in _leaves(group):
            if not isinstance(leaf, trio.Cancelled):
                raise leaf from None
        raise
