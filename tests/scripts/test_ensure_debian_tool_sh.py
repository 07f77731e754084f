"""scripts/ensure-chromium.sh and scripts/ensure-redis.sh (both scripts/ensure-debian-tool.sh): find the
tool, or install Debian's package with apt-get; never a download.

Run with a PATH holding only stubs (and bash, env, id), so the machine's own tools are out of sight.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@dataclass(frozen=True)
class Tool:
    script: str
    command: str  # also the Debian package's name
    variable: str


TOOLS = [
    Tool("ensure-chromium.sh", "chromium", "CHROMIUM_BIN"),
    Tool("ensure-redis.sh", "redis-server", "REDIS_SERVER_BIN"),
]


@pytest.fixture(params=TOOLS, ids=[t.command for t in TOOLS])
def tool(request: pytest.FixtureRequest) -> Tool:
    chosen: Tool = request.param
    return chosen


def write_stub(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/bash\nset -eu\n{body}\n")
    path.chmod(0o755)
    return path


def tools(tmp_path: Path, *, apt_get: str | None) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "env", "id"):
        found = shutil.which(name)
        assert found is not None
        os.symlink(found, bin_dir / name)
    if apt_get is not None:
        write_stub(bin_dir / "apt-get", f'echo "$*" >> "$APT_CALLS"\n{apt_get}')
    return bin_dir


def run(tool: Tool, bin_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        ["/bin/bash", str(SCRIPTS / tool.script)],
        env={"PATH": str(bin_dir), "APT_CALLS": str(tmp_path / "apt-calls"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installs(tool: Tool) -> str:
    """An apt-get stub whose install puts the tool on PATH."""
    return (
        'if [[ "$*" == *" install "* ]]; then '
        f'printf "#!/bin/sh\\n" > "${{0%/*}}/{tool.command}"; /bin/chmod +x "${{0%/*}}/{tool.command}"; fi'
    )


def test_the_variable_wins_and_nothing_is_installed(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=installs(tool))
    chosen = write_stub(tmp_path / f"my-{tool.command}", "")
    result = run(tool, bin_dir, tmp_path, **{tool.variable: str(chosen)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(chosen)
    assert not (tmp_path / "apt-calls").exists()


def test_a_variable_that_is_not_executable_is_refused(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=installs(tool))
    result = run(tool, bin_dir, tmp_path, **{tool.variable: str(tmp_path / "nowhere")})
    assert result.returncode == 1
    assert tool.variable in result.stderr and "not an executable" in result.stderr
    assert result.stderr.startswith(f"{tool.script}:")


def test_the_tool_on_path_is_used(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=installs(tool))
    write_stub(bin_dir / tool.command, "")
    result = run(tool, bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bin_dir / tool.command)
    assert not (tmp_path / "apt-calls").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs apt-get as root (CI is root)")
def test_a_missing_tool_is_installed_from_debian(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=installs(tool))
    result = run(tool, bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bin_dir / tool.command)
    calls = (tmp_path / "apt-calls").read_text().splitlines()
    assert [call.split()[-1] for call in calls] == ["update", tool.command]
    assert f"install -y --no-install-recommends {tool.command}" in calls[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs apt-get as root (CI is root)")
def test_a_failed_install_says_so(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get='[[ "$*" != *" install "* ]]')
    result = run(tool, bin_dir, tmp_path)
    assert result.returncode == 1
    assert f"apt-get could not install {tool.command}" in result.stderr


def test_without_apt_get_it_says_what_to_do(tool: Tool, tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=None)
    result = run(tool, bin_dir, tmp_path)
    assert result.returncode == 1
    assert "no apt-get" in result.stderr and tool.variable in result.stderr
