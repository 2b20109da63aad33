# syntax=docker/dockerfile:1
#
# centrifugo-py container image.
#
#   docker build -t centrifugo-py .
#   docker run --rm -p 8000:8000 \
#     -e CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY=secret -e CENTRIFUGO_HTTP_API_KEY=key \
#     centrifugo-py
#
# Configuration comes from CENTRIFUGO_* environment variables and/or a config file: a file
# mounted at /centrifugo/config.json is picked up without flags; any other path (or YAML/TOML)
# is passed as `-c /path/to/config.yaml` after the image name. Several workers per container
# (WEB_CONCURRENCY=N) need the Redis engine (CENTRIFUGO_ENGINE_TYPE=redis).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    CENTRIFUGO_HEALTH_ENABLED=true

# The build context is whitelisted by .dockerignore: pyproject.toml, app/ and lua/ only.
WORKDIR /opt/centrifugo-py
COPY . .

# Runtime dependencies only (no test extras); the wheel carries app/ and the lua/ scripts.
# pip byte-compiles at install time, so a read-only root filesystem is fine at run time.
RUN --mount=type=cache,target=/root/.cache/pip pip install . && rm -rf build

# A fixed numeric uid lets Kubernetes verify runAsNonRoot without /etc/passwd lookups.
RUN groupadd --system --gid 10001 centrifugo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin centrifugo \
    && mkdir /centrifugo && chown 10001:10001 /centrifugo

WORKDIR /centrifugo
USER 10001:10001

EXPOSE 8000

# Probes the internal port when one is configured (health moves there), else the main one.
# It reads the ports from CENTRIFUGO_HTTP_SERVER_PORT / _INTERNAL_PORT: change ports through
# those variables, not only in a mounted config file or with -p.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; e = os.environ.get; p = int(e('CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT') or 0) or int(e('CENTRIFUGO_HTTP_SERVER_PORT') or 8000); u.urlopen(f'http://127.0.0.1:{p}' + (e('CENTRIFUGO_HEALTH_HANDLER_PREFIX') or '/health'), timeout=4)"]

ENTRYPOINT ["centrifugo"]
CMD []
