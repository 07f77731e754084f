# syntax=docker/dockerfile:1

# Image for the avatar agent worker (`python agent.py start`).
# Build: docker build -t avatar-agent .        (or scripts/build-image.sh, with podman)
# Run:   docker run --env-file .env -p 8081:8081 avatar-agent
#
# Two stages: `build` installs uv and syncs the locked runtime dependencies into /app/.venv; the image
# itself gets that environment (byte-compiled) and the application code, and neither uv nor pip's work.

FROM python:3.11-slim AS build

ARG UV_VERSION=0.13.9

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

# No apt packages: every locked dependency ships a manylinux wheel for CPython 3.11,
# and the native libraries they load (libstdc++, libgcc_s) are part of the Debian base.
RUN pip install --no-cache-dir --root-user-action=ignore "uv==${UV_VERSION}"

WORKDIR /app
# Dependencies only (no dev or other groups): this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev


FROM python:3.11-slim

# Fixed, numeric ids so orchestrators can verify the container runs as non-root.
ARG APP_UID=10001

ENV PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH

RUN groupadd --gid "${APP_UID}" appuser \
    && useradd --uid "${APP_UID}" --gid "${APP_UID}" --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin appuser \
    && install --directory --owner="${APP_UID}" --group="${APP_UID}" /app

WORKDIR /app
USER ${APP_UID}:${APP_UID}

# The environment keeps the path it was built at: its scripts and pyvenv.cfg name it.
COPY --from=build --chown=${APP_UID}:${APP_UID} /app/.venv /app/.venv

COPY --chown=${APP_UID}:${APP_UID} agent.py assistant.py avatar_tools.py chat.py config.py dev_reload.py \
    held_turns.py meeting_chat.py subscriptions.py ./
COPY --chown=${APP_UID}:${APP_UID} providers/ ./providers/
COPY --chown=${APP_UID}:${APP_UID} speech/ ./speech/
COPY --chown=${APP_UID}:${APP_UID} recovery/ ./recovery/
COPY --chown=${APP_UID}:${APP_UID} observability/ ./observability/

# Fetch plugin model files at build time so workers start without network downloads, and byte-compile
# the application (the dependencies were compiled by uv) so no process compiles it at start.
RUN python -m livekit.agents download-files \
    && python -m compileall -q -x '/\.venv/' .

# The worker's health endpoint: livekit-agents serves it on AGENT_HTTP_PORT (8081 unless set). The check
# reads the same variable from the container's environment (`docker run -e AGENT_HTTP_PORT=9000 ...`);
# a port set only in a .env file inside the image would not reach it.
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('AGENT_HTTP_PORT') or '8081'; urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=4)"]

CMD ["python", "agent.py", "start"]
