"""Run a command as the subreaper of everything it starts; if it dies of a signal, stop what it left.

`python scripts/reaped.py CMD ARGS...` exits with CMD's status (128 + N when signal N killed it).

A test process that crashes stops nothing it started: its workers and livekit-servers run on, each in a
session of its own. As a child subreaper (Linux `prctl(PR_SET_CHILD_SUBREAPER)`) this process becomes
their parent when theirs dies, so it can stop exactly those, and nothing else on the machine: not a
`scripts/run-local.sh` worker in another terminal, not another checkout's tests, even when they run the
same Python or the same livekit-server binary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
# What is left gets SIGTERM, and SIGKILL if still there after this long.
GRACE_SECONDS = 5.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process visible now."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":  # a zombie is over already
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _reap() -> None:
    """Collect the exit status of our (adopted) children that ended, so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "?"


def stop_leftovers() -> list[int]:
    """SIGTERM every process this one adopted or still parents, SIGKILL what outlives the grace."""
    left = descendants(os.getpid())
    for pid in left:
        print(
            f"reaped.py: stopping what the crashed run left: {pid} {_command_line(pid)}",
            file=sys.stderr,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        _reap()
        if not descendants(os.getpid()):
            return left
        time.sleep(0.1)
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap()
    return left


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: reaped.py COMMAND [ARGS...]", file=sys.stderr)
        return 64
    become_subreaper()
    # The command starts with SIGINT as it is (a command given SIGINT ignored could not trap it:
    # bash cannot). Then Ctrl-C, which reaches the whole foreground process group, is the command's
    # to handle; this only waits for it.
    command = subprocess.Popen(argv)  # noqa: S603 - the caller's own command
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A run cancelled with SIGTERM (a CI runner's cancel) is the command's to end, and then what it
    # left is stopped here as after a crash: dying of it here would leave all of it running.
    signal.signal(signal.SIGTERM, lambda *_: command.send_signal(signal.SIGTERM))
    status = wait_reaping(command.pid)
    command.returncode = status  # already collected here
    if status >= 0:
        return status
    stop_leftovers()
    return 128 - status


def wait_reaping(pid: int) -> int:
    """Wait for `pid`'s exit status, collecting every adopted process that ends meanwhile: one left
    a zombie would look alive to whoever waits for it to be gone (a test of a killed worker's
    helper process, say)."""
    while True:
        ended, status = os.waitpid(-1, 0)
        if ended == pid:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
