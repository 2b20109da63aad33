#!/bin/sh
# The image's entrypoint: runs the command it is given, `centrifugo` by default (the image's
# CMD), so `docker run IMAGE centrifugo` and `docker run IMAGE centrifugo gentoken -u 42` work
# as with Centrifugo's own image.
#
# - First argument a flag (`docker run IMAGE -c /conf/config.yaml`, a Kubernetes `args:`
#   list): they are centrifugo's flags, as in the official images' entrypoints.
# - PORT (Cloud Run, Render, Fly.io: the port the platform routes to) is the server's port
#   unless CENTRIFUGO_HTTP_SERVER_PORT is set: set there, it wins over a config file's
#   http_server.port, and an explicit --http_server.port flag still wins over it.
set -eu

case "${1:-}" in
    -*) set -- centrifugo "$@" ;;
esac

if [ -n "${PORT:-}" ] && [ -z "${CENTRIFUGO_HTTP_SERVER_PORT:-}" ]; then
    CENTRIFUGO_HTTP_SERVER_PORT="$PORT"
    export CENTRIFUGO_HTTP_SERVER_PORT
fi

# exec: the command replaces this shell as PID 1 and gets docker stop's SIGTERM itself.
exec "$@"
