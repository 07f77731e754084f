"""Static checks of the container recipe: the Dockerfile's conventions and its build context.

No Docker engine is available, so the Dockerfile is parsed and its instructions are checked
against the repository, the uv lock file and the .dockerignore rules Docker would apply.
"""

from __future__ import annotations

import ast
import http.server
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.support.lock import normalize, runtime_distributions

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

WORKER_CMD = ["python", "agent.py", "start"]
HEALTH_PORT = "8081"
DEPENDENCY_MANIFESTS = frozenset({"pyproject.toml", "uv.lock"})
FOREIGN_MANIFEST = re.compile(
    r"(requirements[\w.-]*\.(txt|in)|setup\.py|setup\.cfg|Pipfile(\.lock)?|poetry\.lock"
    r"|environment\.ya?ml)$"
)
SHELL_OPERATORS = frozenset({"&&", "||", ";", "|"})
ROOT_USERS = frozenset({"", "root", "0"})


@dataclass(frozen=True)
class Instruction:
    index: int
    keyword: str
    value: str  # with the Dockerfile's own ARG defaults substituted


@dataclass(frozen=True)
class Copy:
    index: int
    sources: list[str]
    destination: str
    flags: dict[str, str]


def _substitute_args(value: str, args: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return args.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, value)


def _parse_dockerfile() -> tuple[list[Instruction], DockerfileParser]:
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    structure: list[dict[str, str]] = parser.structure
    # ARG defaults as each instruction sees them: an ARG holds in its own build stage only.
    contexts = parser.context_structure
    instructions = [
        Instruction(
            index, item["instruction"], _substitute_args(item["value"], contexts[index].args)
        )
        for index, item in enumerate(structure)
        if item["instruction"] != "COMMENT"
    ]
    return instructions, parser


def _strip_flags(value: str) -> tuple[dict[str, str], str]:
    """Separates leading `--name=value` options (COPY --chown, RUN --mount) from the rest."""
    flags: dict[str, str] = {}
    rest = value.strip()
    while match := re.match(r"--([\w-]+)(?:=(\S*))?\s*", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    return flags, rest


def _arguments(rest: str) -> list[str]:
    """Exec form (a JSON array) or shell form, as Docker reads both."""
    return list(json.loads(rest)) if rest.startswith("[") else shlex.split(rest)


def _copy_of(instruction: Instruction) -> Copy:
    flags, rest = _strip_flags(instruction.value)
    *sources, destination = _arguments(rest)
    return Copy(instruction.index, sources, destination, flags)


def _shell_commands(run_value: str) -> list[list[str]]:
    """Splits a RUN instruction into its individual commands (argv lists)."""
    _, rest = _strip_flags(run_value)
    if rest.startswith("["):
        return [_arguments(rest)]
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _option_value(command: list[str], option: str) -> str | None:
    for position, token in enumerate(command):
        if token.startswith(f"{option}="):
            return token.partition("=")[2]
        if token == option and position + 1 < len(command):
            return command[position + 1]
    return None


def _user_name(user_value: str) -> str:
    return user_value.split(":", 1)[0].strip()


RunMatch = tuple[Instruction, list[str]]  # a RUN instruction and one command inside it


@dataclass(frozen=True)
class Recipe:
    instructions: list[Instruction]
    parser: DockerfileParser

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    @property
    def copies(self) -> list[Copy]:
        return [_copy_of(i) for i in self.of("COPY")]

    @property
    def context_copies(self) -> list[Copy]:
        """COPY instructions that take files from the build context (not from another stage)."""
        return [c for c in self.copies if "from" not in c.flags]

    def stage_start(self, index: int) -> int:
        """The index of the FROM that starts the build stage `index` is in."""
        return max(i.index for i in self.of("FROM") if i.index < index)

    @property
    def final_stage_start(self) -> int:
        return self.of("FROM")[-1].index

    def env_at(self, index: int) -> dict[str, str]:
        envs: dict[str, str] = self.parser.context_structure[index].envs
        return envs

    def runs_matching(self, predicate: Callable[[list[str]], bool]) -> list[RunMatch]:
        return [
            (run, command)
            for run in self.of("RUN")
            for command in _shell_commands(run.value)
            if predicate(command)
        ]

    def user_at(self, index: int) -> str:
        start = self.stage_start(index)
        users = [i.value for i in self.of("USER") if start < i.index < index]
        return _user_name(users[-1]) if users else "root"

    @property
    def workdir(self) -> str:
        workdirs = self.of("WORKDIR")
        assert workdirs, "the Dockerfile sets no WORKDIR"
        return workdirs[-1].value.strip()

    @property
    def envs(self) -> dict[str, str]:
        envs: dict[str, str] = self.parser.envs
        return envs


def _is_uv_sync(command: list[str]) -> bool:
    return command[:2] == ["uv", "sync"]


def _is_download_files(command: list[str]) -> bool:
    if command[:3] == ["uv", "run", "--no-sync"]:
        command = command[3:]
    return command in (
        ["python", "-m", "livekit.agents", "download-files"],
        ["python", "agent.py", "download-files"],
    )


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    instructions, parser = _parse_dockerfile()
    return Recipe(instructions, parser)


def _single(matches: list[RunMatch], what: str) -> RunMatch:
    assert len(matches) == 1, f"expected exactly one RUN with {what}, found {len(matches)}"
    return matches[0]


def _source_copies(recipe: Recipe) -> list[Copy]:
    """COPY instructions that bring in application code (not the dependency manifests)."""
    return [c for c in recipe.context_copies if not set(c.sources) <= DEPENDENCY_MANIFESTS]


def _copied_paths(recipe: Recipe) -> list[str]:
    """The build-context paths the Dockerfile copies."""
    return [source.rstrip("/") for c in recipe.context_copies for source in c.sources]


def test_base_image_is_python_311_slim(recipe: Recipe) -> None:
    base: str = recipe.parser.baseimage
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    # the environment built in one stage runs in another: one interpreter for both
    assert set(recipe.parser.parent_images) == {base}


def test_dependencies_come_from_the_lock_without_dev_group(recipe: Recipe) -> None:
    _, command = _single(recipe.runs_matching(_is_uv_sync), "uv sync")
    assert "--locked" in command
    assert "--no-dev" in command
    assert "--frozen" not in command  # would skip the lock-vs-pyproject check --locked does


def test_lock_file_copied_and_synced_before_application_code(recipe: Recipe) -> None:
    lock_copies = [c for c in recipe.copies if "uv.lock" in c.sources]
    assert len(lock_copies) == 1
    lock_copy = lock_copies[0]
    assert set(lock_copy.sources) == DEPENDENCY_MANIFESTS  # anything else would bust the cache
    sync_run, _ = _single(recipe.runs_matching(_is_uv_sync), "uv sync")
    source_copies = _source_copies(recipe)
    assert source_copies, "the Dockerfile copies no application code"
    assert lock_copy.index < sync_run.index < min(c.index for c in source_copies)


def test_uv_is_pinned_and_the_only_pip_install(recipe: Recipe) -> None:
    pip_installs = recipe.runs_matching(lambda c: "pip" in c[:3] and "install" in c)
    _, command = _single(pip_installs, "pip install")
    packages = [token for token in command[command.index("install") + 1 :] if token[0] != "-"]
    assert len(packages) == 1
    assert re.fullmatch(r"uv==\d+\.\d+\.\d+", packages[0]), packages


def test_no_dependency_manifest_outside_the_uv_project(recipe: Recipe) -> None:
    copied = _copied_paths(recipe)
    assert not [path for path in copied if FOREIGN_MANIFEST.search(path)]
    assert not recipe.of("ADD"), "use COPY: ADD fetches URLs and unpacks archives implicitly"


def test_venv_from_sync_is_first_on_path(recipe: Recipe) -> None:
    sync_run, _ = _single(recipe.runs_matching(_is_uv_sync), "uv sync")
    venv = recipe.env_at(sync_run.index).get("UV_PROJECT_ENVIRONMENT", f"{recipe.workdir}/.venv")
    assert venv.startswith("/"), venv
    if sync_run.index < recipe.final_stage_start:
        # built in an earlier stage: copied into the image at the same path (its scripts name it)
        venv_copies = [c for c in recipe.copies if "from" in c.flags and venv in c.sources]
        assert len(venv_copies) == 1, "the environment is not copied into the image"
        assert venv_copies[0].index > recipe.final_stage_start
        assert venv_copies[0].destination.rstrip("/") == venv
    # dockerfile-parse expands $PATH to empty, so only the first entry is meaningful here
    assert recipe.envs["PATH"].split(":")[0] == f"{venv}/bin"
    assert recipe.envs.get("PYTHONUNBUFFERED") == "1"


def test_runs_as_fixed_non_root_user_before_download_and_cmd(recipe: Recipe) -> None:
    download_run, _ = _single(recipe.runs_matching(_is_download_files), "download-files")
    cmd = recipe.of("CMD")[-1]
    for index in (download_run.index, cmd.index):
        assert recipe.user_at(index) not in ROOT_USERS
    uid = recipe.user_at(cmd.index)
    assert uid.isdigit(), f"USER should be a numeric uid so runAsNonRoot can verify it: {uid}"

    user_adds = recipe.runs_matching(lambda c: c[:1] == ["useradd"])
    _, useradd = _single(user_adds, "useradd")
    assert _option_value(useradd, "--uid") == uid, "USER's uid is not the one useradd creates"


def test_application_files_are_owned_by_the_runtime_user(recipe: Recipe) -> None:
    assert recipe.workdir == "/app"
    for copy in [c for c in recipe.copies if c.index > recipe.final_stage_start]:
        owner = _user_name(copy.flags.get("chown", ""))
        assert owner == recipe.user_at(copy.index), f"COPY {copy.sources} is not owned by USER"


def test_download_files_runs_at_build_time_after_dependencies(recipe: Recipe) -> None:
    download_run, _ = _single(recipe.runs_matching(_is_download_files), "download-files")
    sync_run, _ = _single(recipe.runs_matching(_is_uv_sync), "uv sync")
    assert sync_run.index < download_run.index < recipe.of("CMD")[-1].index


def test_exposes_the_worker_health_port(recipe: Recipe) -> None:
    exposed = [port.split("/")[0] for i in recipe.of("EXPOSE") for port in i.value.split()]
    assert HEALTH_PORT in exposed


def _health_check_command(recipe: Recipe) -> list[str]:
    (check,) = recipe.of("HEALTHCHECK")
    _, rest = _strip_flags(check.value)
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD" and command.lstrip().startswith("["), "exec form, no shell"
    return list(json.loads(command))


def _run_health_check(command: list[str], env: dict[str, str]) -> int:
    assert command[0] == "python"  # the image's venv Python; ours stands in for it
    return subprocess.run(  # noqa: S603 - the Dockerfile's own check
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False
    ).returncode


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.asked = True  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_the_health_check_asks_the_port_the_worker_serves_on(recipe: Recipe) -> None:
    """AGENT_HTTP_PORT moves the worker's health server: the check follows it (8081 unless set)."""
    command = _health_check_command(recipe)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    server.asked = False  # type: ignore[attr-defined]
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        assert _run_health_check(command, {"AGENT_HTTP_PORT": str(port)}) == 0
        assert server.asked  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
    # nothing listens there any more: unhealthy
    assert _run_health_check(command, {"AGENT_HTTP_PORT": str(port)}) != 0
    assert "8081" in command[-1]  # the worker's own default, when the variable is not set


def test_cmd_starts_the_worker_in_exec_form(recipe: Recipe) -> None:
    cmds = recipe.of("CMD")
    assert len(cmds) == 1
    assert cmds[0].value.lstrip().startswith("["), "shell form would not forward SIGTERM"
    assert json.loads(cmds[0].value) == WORKER_CMD
    assert not recipe.of("ENTRYPOINT")


def test_every_copy_source_exists(recipe: Recipe) -> None:
    copied = _copied_paths(recipe)
    assert {"pyproject.toml", "uv.lock", "agent.py"} <= set(copied)
    missing = [path for path in copied if not (REPO_ROOT / path).exists()]
    assert not missing, f"COPY sources missing from the repository: {missing}"


def _python_files(paths: list[str]) -> Iterator[Path]:
    for path in paths:
        full = REPO_ROOT / path
        if full.is_file() and full.suffix == ".py":
            yield full
        elif full.is_dir():
            yield from (f for f in full.rglob("*.py") if "__pycache__" not in f.parts)


def _top_level_imports(file: Path) -> set[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _is_local_module(name: str) -> bool:
    return (REPO_ROOT / f"{name}.py").is_file() or (REPO_ROOT / name).is_dir()


def test_image_contains_every_local_module_the_code_imports(recipe: Recipe) -> None:
    copied = set(_copied_paths(recipe))
    imported = set().union(*(_top_level_imports(f) for f in _python_files(sorted(copied))))
    local = {name for name in imported if _is_local_module(name)}
    not_copied = sorted(n for n in local if n not in copied and f"{n}.py" not in copied)
    assert not not_copied, f"imported but not copied into the image: {not_copied}"


def test_third_party_imports_are_installed_without_dev_group(recipe: Recipe) -> None:
    copied = sorted(set(_copied_paths(recipe)))
    imported = set().union(*(_top_level_imports(f) for f in _python_files(copied)))
    third_party = {
        name
        for name in imported
        if name not in sys.stdlib_module_names and not _is_local_module(name)
    }
    runtime = runtime_distributions()
    providers = packages_distributions()
    missing = sorted(
        name
        for name in third_party
        if not {normalize(d) for d in providers.get(name, [])} & runtime
    )
    assert not missing, f"imported but not installed by `uv sync --no-dev`: {missing}"


def test_sync_without_dev_installs_no_other_group() -> None:
    """`uv sync --no-dev` still installs every group in tool.uv.default-groups (`bench`, say)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    default_groups = pyproject.get("tool", {}).get("uv", {}).get("default-groups", ["dev"])
    assert isinstance(default_groups, list) and set(default_groups) <= {"dev"}, default_groups


def test_runtime_closure_excludes_dev_tools() -> None:
    runtime = runtime_distributions()
    assert {"livekit-agents", "livekit", "espeakng-loader", "numpy"} <= runtime
    assert not {"pytest", "mypy", "ruff", "dockerfile-parse"} & runtime


def test_lock_matches_pyproject_as_uv_sync_locked_requires() -> None:
    uv = shutil.which("uv")
    if uv is None:
        if os.environ.get("CI"):
            pytest.fail("uv is not on PATH (scripts/bootstrap.sh puts it there)")
        pytest.skip("uv is not on PATH")
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [uv, "lock", "--check", "--offline"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


class DockerIgnore:
    """Docker's .dockerignore semantics: patterns are anchored at the context root, `*` and
    `?` stay within one path segment, `**` spans segments, a pattern matching a directory
    excludes its contents, `!` re-includes, and the last matching pattern wins."""

    def __init__(self, lines: list[str]) -> None:
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            excluded = not line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            self._rules.append((re.compile(self._to_regex(pattern)), excluded))

    @classmethod
    def from_file(cls, path: Path) -> DockerIgnore:
        return cls(path.read_text(encoding="utf-8").splitlines())

    @staticmethod
    def _to_regex(pattern: str) -> str:
        parts: list[str] = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                parts.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                parts.append(".*")
                i += 2
            elif pattern[i] == "*":
                parts.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                parts.append("[^/]")
                i += 1
            else:
                parts.append(re.escape(pattern[i]))
                i += 1
        return "".join(parts)

    def is_excluded(self, path: str) -> bool:
        segments = path.strip("/").split("/")
        candidates = ["/".join(segments[: n + 1]) for n in range(len(segments))]
        excluded = False
        for regex, excludes in self._rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = excludes
        return excluded


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    ignore = DockerIgnore(["*.log", "**/*.tmp", "build", "!build/keep.txt", "a?c"])
    assert ignore.is_excluded("x.log")
    assert not ignore.is_excluded("sub/x.log")  # `*` does not cross directories
    assert ignore.is_excluded("x.tmp") and ignore.is_excluded("a/b/x.tmp")
    assert ignore.is_excluded("build/out/file.bin")
    assert not ignore.is_excluded("build/keep.txt")
    assert ignore.is_excluded("abc") and not ignore.is_excluded("a/c")
    assert not ignore.is_excluded("buildx")


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore.from_file(DOCKERIGNORE)


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        ".env.production",
        ".env.example",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_dockerfile.py",
        "bench/avatar_latency.py",
        "web/node_modules/livekit-client/package.json",
        "build/browser/avatar-page.png",
        "KMS/key.pem",
        "worker.log",
        "providers/debug.log",
        "__pycache__",
        "providers/__pycache__",
        "__pycache__/config.cpython-311.pyc",
        "providers/__pycache__/anam.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/README.md",
        "speech/.pytest_cache/v/cache/nodeids",
        "node_modules/livekit-client/dist/livekit-client.umd.js",
        "web/node_modules/.package-lock.json",
    ],
)
def test_dockerignore_excludes(dockerignore: DockerIgnore, path: str) -> None:
    assert dockerignore.is_excluded(path)


def test_dockerignore_keeps_everything_the_dockerfile_copies(
    recipe: Recipe, dockerignore: DockerIgnore
) -> None:
    copied = _copied_paths(recipe)
    assert not [path for path in copied if dockerignore.is_excluded(path)]
    python_files = [f.relative_to(REPO_ROOT).as_posix() for f in _python_files(copied)]
    assert not [path for path in python_files if dockerignore.is_excluded(path)]
