"""Liveness: the work of a claimed batch says when it moves, so its claims are renewed only
while it does.

The pipeline sets a hook for each batch it runs (`reporting`); anything below it that moves the
work on (a block read, a part uploaded, a stage step done) calls `moved()`, and a call that
carries its own deadline calls `moved(for_s=deadline)` before it starts: until then it counts as
moving. Code outside a batch (probes, commands) has no hook, and `moved()` does nothing there.
A context variable carries the hook, so it follows the batch into its tasks and threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Hook = Callable[[float], None]
_hook: ContextVar[Hook | None] = ContextVar("dropzone_liveness", default=None)


def moved(for_s: float = 0.0) -> None:
    """The current batch's work moved now (or is in a call bounded by `for_s` seconds)."""
    hook = _hook.get()
    if hook is not None:
        hook(for_s)


@contextmanager
def reporting(hook: Hook) -> Iterator[None]:
    """While inside, `moved()` (here, and in tasks and threads started here) calls `hook`."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
