"""The livekit override in pyproject.toml: kept only while livekit-agents itself pins a livekit whose
native client crashes processes (docs/native-crash.md)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Operators whose version is a lower bound (or the only version) of what a requirement admits.
LOWER_BOUND_OPERATORS = {"==", "===", ">=", ">", "~="}


def livekit_override() -> Requirement:
    overrides = tomllib.loads(PYPROJECT.read_text())["tool"]["uv"]["override-dependencies"]
    [livekit] = [req for req in map(Requirement, overrides) if req.name == "livekit"]
    return livekit


def overridden_version(override: Requirement) -> Version:
    [pin] = override.specifier
    assert pin.operator == "==", f"the livekit override should pin one version, not {override}"
    return Version(pin.version)


def agents_livekit_requirement() -> Requirement:
    requirements = map(Requirement, importlib.metadata.requires("livekit-agents") or [])
    [livekit] = [req for req in requirements if req.name == "livekit" and req.marker is None]
    return livekit


def admits_fixed_or_later(requirement: Requirement, fixed: Version) -> bool:
    if requirement.specifier.contains(fixed, prereleases=True) or not requirement.specifier:
        return True
    for spec in requirement.specifier:
        try:
            bound = Version(spec.version)
        except InvalidVersion:  # a wildcard such as ==1.1.*: contains() above has answered
            continue
        if spec.operator in LOWER_BOUND_OPERATORS and bound >= fixed:
            return True
    return False


def test_admits_fixed_or_later_reads_livekit_agents_requirements() -> None:
    fixed = Version("1.2.1")
    assert not admits_fixed_or_later(Requirement("livekit==1.1.21"), fixed)
    assert not admits_fixed_or_later(Requirement("livekit>=1.1,<1.2"), fixed)
    assert not admits_fixed_or_later(Requirement("livekit==1.1.*"), fixed)
    assert admits_fixed_or_later(Requirement("livekit==1.2.1"), fixed)
    assert admits_fixed_or_later(Requirement("livekit==1.2.3"), fixed)
    assert admits_fixed_or_later(Requirement("livekit>=1.1.21,<2"), fixed)
    assert admits_fixed_or_later(Requirement("livekit~=1.3"), fixed)
    assert admits_fixed_or_later(Requirement("livekit"), fixed)


def test_the_livekit_override_is_needed_while_livekit_agents_pins_the_crashing_livekit() -> None:
    override = livekit_override()
    fixed = overridden_version(override)
    required = agents_livekit_requirement()
    agents = importlib.metadata.version("livekit-agents")
    assert not admits_fixed_or_later(required, fixed), (
        f"livekit-agents {agents} now requires {required}, which admits livekit {fixed} or later: "
        f'the override is no longer needed. Remove "{override}" from [tool.uv] override-dependencies '
        "in pyproject.toml (with its comment), run `uv lock`, delete this test file, and say in "
        "docs/native-crash.md that livekit-agents now requires the fixed livekit itself."
    )


def test_the_installed_livekit_is_the_overridden_version() -> None:
    override = livekit_override()
    installed = importlib.metadata.version("livekit")
    assert Version(installed) == overridden_version(override), (
        f"livekit {installed} is installed, but pyproject.toml overrides it to {override} "
        "(docs/native-crash.md): run `uv sync` to install the locked version."
    )
