"""scripts/ensure-uv.sh, as a fresh machine runs it, without the network: stub `python3`, `pip` and `uv`.

uv on PATH is used as it is; otherwise uv is installed into a private virtual environment (never into the
system or user Python, which PEP 668 forbids on Debian and Ubuntu), and a failed install leaves nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-uv.sh"
SYSTEM_PATH = "/usr/bin:/bin"
UV_VERSION = "0.13.9"


def write_stub(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/bash\nset -eu\n{body}\n")
    path.chmod(0o755)
    return path


def stub_python3(bin_dir: Path, *, pip_body: str) -> None:
    """A python3 that refuses pip outside a virtual environment (as Debian's does) and makes a venv
    whose python runs `pip_body` for `-m pip install ...`."""
    venv_python = (
        f'#!/bin/bash\\nset -eu\\n[[ "$1 $2 $3" == "-m pip install" ]] || exit 64\\n{pip_body}\\n'
    )
    write_stub(
        bin_dir / "python3",
        'if [[ "$1 $2" == "-m venv" ]]; then\n'
        '  mkdir -p "$3/bin"\n'
        f'  printf \'{venv_python}\' > "$3/bin/python"; chmod +x "$3/bin/python"\n'
        "  exit 0\n"
        "fi\n"
        'echo "error: externally-managed-environment" >&2; exit 1',
    )


INSTALLS_UV = 'printf "#!/bin/sh\\necho uv-from-venv\\n" > "$(dirname "$0")/uv"; chmod +x "$(dirname "$0")/uv"'


def run(tools: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        [str(SCRIPT)],
        env={
            "PATH": f"{bin_dir}:{SYSTEM_PATH}",
            "HOME": str(tools.parent),
            "AVATAR_AGENT_TOOLS_DIR": str(tools),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_uv_on_path_is_used_and_nothing_is_installed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    uv = write_stub(bin_dir / "uv", "echo uv-on-path")
    write_stub(bin_dir / "python3", 'echo "python3 must not run" >&2; exit 1')

    result = run(tmp_path / "tools", bin_dir)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(uv)
    assert not (tmp_path / "tools").exists()


def test_without_uv_it_installs_a_private_copy_and_links_only_uv(tmp_path: Path) -> None:
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    stub_python3(bin_dir, pip_body=f'[[ "$*" == *"uv=={UV_VERSION}"* ]] || exit 65\n{INSTALLS_UV}')

    result = run(tools, bin_dir)

    assert result.returncode == 0, result.stderr
    link = tools / "bin" / "uv"
    assert result.stdout.strip() == str(link)
    assert sorted(p.name for p in (tools / "bin").iterdir()) == ["uv"]  # safe to put on PATH
    assert sorted(p.name for p in tools.iterdir()) == ["bin", f"uv-{UV_VERSION}"]
    assert (
        subprocess.run(  # noqa: S603
            [str(link)], capture_output=True, text=True, check=True
        ).stdout
        == "uv-from-venv\n"
    )

    # the second run finds it and installs nothing
    write_stub(bin_dir / "python3", 'echo "python3 must not run again" >&2; exit 1')
    again = run(tools, bin_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(link)


def test_a_failed_pip_install_leaves_nothing_and_shows_pip_s_error(tmp_path: Path) -> None:
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    stub_python3(
        bin_dir,
        pip_body='echo "ERROR: No matching distribution found for uv-xyz-42" >&2; exit 1',
    )

    result = run(tools, bin_dir)

    assert result.returncode != 0
    assert "uv-xyz-42" in result.stderr
    assert "pip could not install uv" in result.stderr
    assert result.stdout == ""
    assert not (tools / f"uv-{UV_VERSION}").exists()
    assert not (tools / "bin" / "uv").exists()


def test_a_python_without_venv_gets_a_clear_message(tmp_path: Path) -> None:
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    write_stub(
        bin_dir / "python3",
        'echo "The virtual environment was not created successfully because ensurepip is not '
        'available." >&2; exit 1',
    )

    result = run(tools, bin_dir)

    assert result.returncode != 0
    assert "ensurepip is not available" in result.stderr
    assert "install python3-venv" in result.stderr
    assert not (tools / f"uv-{UV_VERSION}").exists()
    assert not (tools / "bin" / "uv").exists()
