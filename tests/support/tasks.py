"""Which asyncio tasks a piece of code left running.

The tests share one event loop for the whole session, on which other tests' servers and rooms may
start tasks of their own at any moment. A "no task left behind" check therefore looks only at tasks
whose coroutine comes from the code it is about.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType


def _origin(task: asyncio.Task[object]) -> str:
    coroutine = task.get_coro()
    code = getattr(coroutine, "cr_code", None) or getattr(coroutine, "gi_code", None)
    return str(Path(code.co_filename).resolve()) if code is not None else ""


def running_tasks_from(*modules: ModuleType, since: set[asyncio.Task[object]]) -> list[str]:
    """Names of the tasks started after `since`, still running, whose coroutine is defined in the
    package or module of one of `modules` (the calling test's own task excluded)."""
    roots = [
        str(Path(m.__file__).resolve().parent if m.__name__ == m.__package__ else m.__file__)
        for m in modules
        if m.__file__ is not None
    ]
    current = asyncio.current_task()
    return sorted(
        f"{task.get_name()} ({_origin(task)})"
        for task in asyncio.all_tasks() - since
        if task is not current
        and not task.done()
        and any(_origin(task).startswith(root) for root in roots)
    )
