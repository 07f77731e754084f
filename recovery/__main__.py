"""`python -m recovery`: run one recovery watcher (see recovery/service.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .service import RecoverySettings, serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(RecoverySettings()))
