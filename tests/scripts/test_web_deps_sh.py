"""scripts/web-deps.sh: `npm ci` of the page's pinned livekit-client, only when that version is not installed.

Run on a copy of the script and web/package.json, with a stub `npm` that records its calls and installs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED = json.loads((REPO_ROOT / "web" / "package.json").read_text())["dependencies"][
    "livekit-client"
]


def project_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "web").mkdir()
    shutil.copy2(REPO_ROOT / "scripts" / "web-deps.sh", root / "scripts")
    shutil.copy2(REPO_ROOT / "web" / "package.json", root / "web")
    return root


def tools(tmp_path: Path, *, npm_installs: str | None) -> Path:
    """A PATH folder with only what the script needs; `npm` installs that version (None: no npm)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "dirname"):
        found = shutil.which(name)
        assert found is not None
        os.symlink(found, bin_dir / name)
    os.symlink(sys.executable, bin_dir / "python3")
    if npm_installs is not None:
        npm = bin_dir / "npm"
        npm.write_text(
            "#!/bin/bash\nset -eu\n"
            'echo "$*" >> "$NPM_CALLS"\n'
            "/bin/mkdir -p node_modules/livekit-client\n"
            f'echo \'{{"version": "{npm_installs}"}}\' > node_modules/livekit-client/package.json\n'
        )
        npm.chmod(0o755)
    return bin_dir


def run(root: Path, bin_dir: Path, calls: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        ["/bin/bash", str(root / "scripts" / "web-deps.sh")],
        env={"PATH": str(bin_dir), "NPM_CALLS": str(calls)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installed(root: Path) -> str:
    manifest = root / "web" / "node_modules" / "livekit-client" / "package.json"
    return str(json.loads(manifest.read_text())["version"])


def test_installs_the_pinned_version_with_npm_ci_when_absent(tmp_path: Path) -> None:
    root, calls = project_copy(tmp_path), tmp_path / "calls"
    result = run(root, tools(tmp_path, npm_installs=PINNED), calls)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().split()[0] == "ci"
    assert installed(root) == PINNED


def test_does_nothing_when_the_pinned_version_is_installed(tmp_path: Path) -> None:
    root, calls = project_copy(tmp_path), tmp_path / "calls"
    bin_dir = tools(tmp_path, npm_installs=PINNED)
    run(root, bin_dir, calls)
    calls.unlink()
    result = run(root, bin_dir, calls)
    assert result.returncode == 0, result.stderr
    assert not calls.exists()


def test_reinstalls_over_another_version(tmp_path: Path) -> None:
    root, calls = project_copy(tmp_path), tmp_path / "calls"
    stale = root / "web" / "node_modules" / "livekit-client"
    stale.mkdir(parents=True)
    (stale / "package.json").write_text('{"version": "0.0.1"}')
    result = run(root, tools(tmp_path, npm_installs=PINNED), calls)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().split()[0] == "ci"
    assert installed(root) == PINNED


def test_without_npm_it_says_what_to_install(tmp_path: Path) -> None:
    root, calls = project_copy(tmp_path), tmp_path / "calls"
    result = run(root, tools(tmp_path, npm_installs=None), calls)
    assert result.returncode == 1
    assert f"npm is needed to install livekit-client {PINNED}" in result.stderr
    assert "apt-get install npm" in result.stderr
