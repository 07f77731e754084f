"""The worker's PocketSphinx fork server: the model loaded once, a decoder forked off it for each job.

Each job's speech recognition needs a decoder process with the US English model loaded, about 0.3
CPU-seconds and 0.3 s on an idle core, paid during the job's start-up, when it competes with the
avatar's. The worker starts one server (speech/sphinx_decoder.py `--fork-server`) before its job
processes exist and tells them where it listens (`SPHINX_DECODER_SERVER`); a job's decoder is then a
fork of the loaded model: ready in 3 ms instead of 0.3 s, with 1 MiB of memory of its own instead of
100 MiB (measured before its first decode, which makes some of the shared pages its own). A job that
finds no server (not started yet, gone, or loaded with other phrases) starts a decoder of its own, as
before.

The server ends with the worker: it exits when its standard input (a pipe from the worker) closes,
which also happens when the worker is killed.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .sphinx_decoder import DEFAULT_PHRASE_MARGIN
from .sphinx_stt import DECODER_SCRIPT, DECODER_SERVER_ENV, decoder_config


class DecoderServer:
    """One fork server, started by `start`; `stop` (or the worker's exit) ends it."""

    def __init__(self, process: subprocess.Popen[bytes], directory: Path) -> None:
        self.process = process
        self.directory = directory
        self.socket_path = directory / "decoder.sock"

    @classmethod
    def start(
        cls, phrases: Sequence[str], phrase_margin: float = DEFAULT_PHRASE_MARGIN
    ) -> DecoderServer:
        """Start the server (it loads the model in the background) and point this process's
        future children at it. Jobs that start before it listens start their own decoders."""
        directory = Path(tempfile.mkdtemp(prefix="sphinx-"))
        config = decoder_config(phrases, phrase_margin)
        process = subprocess.Popen(  # noqa: S603 - our own script, no shell
            [
                sys.executable,
                "-I",
                str(DECODER_SCRIPT),
                "--fork-server",
                str(directory / "decoder.sock"),
                config,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        server = cls(process, directory)
        os.environ[DECODER_SERVER_ENV] = str(server.socket_path)
        return server

    def wait_ready(self, timeout: float = 30.0) -> int:
        """Block until the model is loaded; the server's pid. Raises if it failed to start."""
        assert self.process.stdout is not None
        line = _readline(self.process.stdout, timeout)
        reply = json.loads(line) if line else {}
        if not reply.get("ready"):
            raise RuntimeError(
                f"the PocketSphinx decoder server did not start: {reply or 'exited'}"
            )
        return int(reply["pid"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if os.environ.get(DECODER_SERVER_ENV) == str(self.socket_path):
            del os.environ[DECODER_SERVER_ENV]
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no answer from the PocketSphinx decoder server in {timeout} s")
    return stream.readline()
