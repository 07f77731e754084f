"""scripts/ensure-redis.sh: finds Redis, or installs Debian's `redis-server` with apt-get; never a download.

Run with a PATH holding only stubs (and bash, env, id), so the machine's own Redis is out of sight.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-redis.sh"


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


def run(bin_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(bin_dir), "APT_CALLS": str(tmp_path / "apt-calls"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


INSTALLS_REDIS = (
    'if [[ "$*" == *" install "* ]]; then '
    'printf "#!/bin/sh\\n" > "${0%/*}/redis-server"; /bin/chmod +x "${0%/*}/redis-server"; fi'
)


def test_redis_bin_wins_and_nothing_is_installed(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=INSTALLS_REDIS)
    browser = write_stub(tmp_path / "my-redis-server", "")
    result = run(bin_dir, tmp_path, REDIS_SERVER_BIN=str(browser))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(browser)
    assert not (tmp_path / "apt-calls").exists()


def test_a_redis_server_bin_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=INSTALLS_REDIS)
    result = run(bin_dir, tmp_path, REDIS_SERVER_BIN=str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "REDIS_SERVER_BIN" in result.stderr and "not an executable" in result.stderr


def test_redis_on_path_is_used(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=INSTALLS_REDIS)
    write_stub(bin_dir / "redis-server", "")
    result = run(bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bin_dir / "redis-server")
    assert not (tmp_path / "apt-calls").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs apt-get as root (CI is root)")
def test_a_missing_redis_server_is_installed_from_debian(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=INSTALLS_REDIS)
    result = run(bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bin_dir / "redis-server")
    calls = (tmp_path / "apt-calls").read_text().splitlines()
    assert [call.split()[-1] for call in calls] == ["update", "redis-server"]
    assert "install -y --no-install-recommends redis-server" in calls[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs apt-get as root (CI is root)")
def test_a_failed_install_says_so(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get='[[ "$*" != *" install "* ]]')
    result = run(bin_dir, tmp_path)
    assert result.returncode == 1
    assert "apt-get could not install redis-server" in result.stderr


def test_without_apt_get_it_says_what_to_do(tmp_path: Path) -> None:
    bin_dir = tools(tmp_path, apt_get=None)
    result = run(bin_dir, tmp_path)
    assert result.returncode == 1
    assert "no apt-get" in result.stderr and "REDIS_SERVER_BIN" in result.stderr
