"""What `uv sync --locked --no-dev` installs, read from uv.lock (the closure of the main dependencies)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

UV_LOCK = Path(__file__).resolve().parents[2] / "uv.lock"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(lock_path: Path = UV_LOCK) -> set[str]:
    """Every distribution the main dependencies pull in, extras included, markers ignored (a superset)."""
    lock = tomllib.loads(lock_path.read_text(encoding="utf-8"))
    packages = {normalize(p["name"]): p for p in lock["package"]}
    root = next(p for p in lock["package"] if p.get("source", {}).get("virtual") == ".")
    pending = [(normalize(d["name"]), tuple(d.get("extra", []))) for d in root["dependencies"]]
    installed: set[str] = set()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        installed.add(name)
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        pending += [(normalize(d["name"]), tuple(d.get("extra", []))) for d in deps]
    return installed
