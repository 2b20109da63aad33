# syntax=docker/dockerfile:1
#
# centrifugo-py container image.
#
#   docker build -t centrifugo-py .
#   docker run --rm -p 8000:8000 \
#     -e CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY=secret -e CENTRIFUGO_HTTP_API_KEY=key \
#     centrifugo-py centrifugo
#
# The command is CMD ["centrifugo"], as in Centrifugo's own image: `docker run IMAGE centrifugo`,
# `docker run IMAGE centrifugo gentoken -u 42` and plain `docker run IMAGE` all work, and
# arguments that start with a dash are centrifugo's flags (docker-entrypoint.sh).
# Configuration comes from CENTRIFUGO_* environment variables and/or a config file: a file
# mounted at /centrifugo/config.json is picked up without flags; any other path (or YAML/TOML)
# is passed as `centrifugo -c /path/to/config.yaml`. PORT, when a platform sets it (Cloud Run,
# Render), is the listening port. Several workers per container (WEB_CONCURRENCY=N) need the
# Redis engine (CENTRIFUGO_ENGINE_TYPE=redis).
#
# The base is pinned by digest (python:3.11-slim, multi-arch index), so a rebuild of the same
# commit gets the same system libraries. To bump it, in both FROM lines:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# (or `docker pull python:3.11-slim` and read "Digest:"), and keep the tag in front of the
# digest so readers and hadolint see the version.

# ---- builder: every dependency as a wheel, then the server's own wheel --------------------
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build

# The pinned dependency set first (requirements.txt): this layer, and the final image's
# dependency layer, are rebuilt only when the pins change, not on every code change. Every
# dependency ships manylinux wheels for CPython 3.11 (amd64 and arm64), so no compiler.
COPY requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels/deps -r requirements.txt

# The build context is whitelisted by .dockerignore: the package metadata, app/ and lua/.
COPY pyproject.toml README.md ./
COPY app/ app/
COPY lua/ lua/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels/app .

# ---- the image: wheels installed from the builder, no source tree, no wheels left ----------
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    CENTRIFUGO_HEALTH_ENABLED=true

# A fixed numeric uid lets Kubernetes verify runAsNonRoot without /etc/passwd lookups.
RUN groupadd --system --gid 10001 centrifugo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin centrifugo \
    && mkdir /centrifugo && chown 10001:10001 /centrifugo

# Dependencies in a layer of their own, from the builder's wheels only (--no-index): exactly
# the pins of requirements.txt. The wheels are bind-mounted, so none stays in the image.
# pip byte-compiles at install time, so a read-only root filesystem is fine at run time.
RUN --mount=type=bind,from=builder,source=/wheels/deps,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    pip install --no-cache-dir --no-index --find-links=/wheels -r /tmp/requirements.txt

# The server: app/ and the lua/ scripts into site-packages, the `centrifugo` console script
# into /usr/local/bin; `pip check` proves the pins satisfy the wheel's own requirements.
RUN --mount=type=bind,from=builder,source=/wheels/app,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/centrifugo_py-*.whl \
    && pip check

COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

WORKDIR /centrifugo
USER 10001:10001

EXPOSE 8000

# Probes the internal port when one is configured (health moves there), else the main one
# (CENTRIFUGO_HTTP_SERVER_PORT, then the platform's PORT, then 8000). Change ports through
# those variables, not only in a mounted config file or with -p.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; e = os.environ.get; p = int(e('CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT') or 0) or int(e('CENTRIFUGO_HTTP_SERVER_PORT') or e('PORT') or 8000); u.urlopen(f'http://127.0.0.1:{p}' + (e('CENTRIFUGO_HEALTH_HANDLER_PREFIX') or '/health'), timeout=4)"]

ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["centrifugo"]
