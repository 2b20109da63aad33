"""The ``centrifugo`` command: arguments parsed and dispatched to the command functions.

Mirrors Centrifugo v6's CLI (``version``, ``genconfig``, ``checkconfig``, ``defaultconfig``,
``defaultenv``, ``gentoken``, ``gensubtoken``, ``checktoken``, ``checksubtoken``). Every failure
ends as one ``error: ...`` line on stderr and exit code 1, never a traceback. Running the server
is app/hosting/ (gunicorn, workers, drain); the token commands' work is app/cli_tokens.py,
``configdoc`` and ``serve`` are app/cli_docs.py.
"""

import argparse
import json
import logging
import os
import platform
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import tomli_w
import yaml

from app import VERSION, cli_docs, cli_tokens
from app.config import (
    Config,
    ConfigError,
    default_config_dict,
    default_env,
    flag_kind,
    load_config,
    load_config_report,
)
from app.hosting import listeners, startup

DEFAULT_CONFIG = "config.json"
DEFAULT_TOKEN_TTL = 3600 * 24 * 7

_SUPPORTED_EXTENSIONS = ("json", "yaml", "yml", "toml")

# Dotted flags shown in --help; any other known key works too (--<key.path>[=value]).
_DOCUMENTED_FLAGS = (
    ("--http_server.port N", "port to bind HTTP server to (same as -p)"),
    ("--http_server.address A", "interface address to listen on (same as -a)"),
    ("--http_server.internal_port N", "custom port for internal endpoints"),
    ("--log.level L", "none, trace, debug, info, warn, error"),
    ("--engine.type T", "memory or redis"),
    ("--client.insecure", "start in insecure client mode"),
    ("--http_api.insecure", "use insecure API mode"),
    ("--admin.enabled", "enable admin web interface"),
    ("--health.enabled", "enable health check endpoint"),
    ("--prometheus.enabled", "enable Prometheus metrics endpoint"),
    ("--sse.enabled / --http_stream.enabled", "enable bidirectional emulation transports"),
    ("--uni_websocket.enabled / --uni_sse.enabled / --uni_http_stream.enabled", "uni transports"),
    ("--pid_file F", "optional path to create PID file"),
)


class CliError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(message)


# --------------------------------------------------------------------------------------------
# Argument parsing


def _split_dotted_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Pull ``--<known.key>[=value]`` flags out of argv; the rest goes to argparse.

    Bool keys without ``=value`` mean true (pflag semantics); other keys take the next token.
    """
    rest: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            rest.extend(argv[i:])
            break
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            kind = flag_kind(name)
            if kind is not None:
                if eq:
                    flags[name] = value
                elif kind == "bool":
                    flags[name] = True
                elif i + 1 < len(argv):
                    i += 1
                    flags[name] = argv[i]
                else:
                    raise CliError(f"flag needs an argument: --{name}")
                i += 1
                continue
            if "." in name:
                raise CliError(f"unknown flag: --{name}")
        rest.append(token)
        i += 1
    return rest, flags


def _build_parser() -> _Parser:
    epilog = "configuration flags (any known key works as --<key.path>[=value]):\n" + "\n".join(
        f"  {flag:<40} {text}" for flag, text in _DOCUMENTED_FLAGS
    )
    parser = _Parser(
        prog="centrifugo",
        description="Centrifugo v6 compatible real-time messaging server (Python).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", help=f"path to config file (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--workers", type=int, help="number of worker processes (env WEB_CONCURRENCY, default 1)"
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="restart a worker (after draining it) once it served this many requests; 0 = never",
    )
    parser.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        help="random extra requests per worker, so workers do not all restart at once",
    )
    parser.add_argument("-p", "--port", dest="port", help="port to bind HTTP server to")
    parser.add_argument("-a", "--address", dest="address", help="interface address to listen on")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)

    def config_arg(p: argparse.ArgumentParser, text: str = "path to config file") -> None:
        p.add_argument("-c", "--config", dest="sub_config", help=f"{text} (default config.json)")

    sub.add_parser("version", help="print version information")

    p = sub.add_parser("genconfig", help="generate minimal configuration file to start with")
    config_arg(p, "path to output config file")

    p = sub.add_parser("checkconfig", help="check configuration file")
    config_arg(p)
    p.add_argument(
        "-s",
        "--strict",
        action="store_true",
        help="strict check - fail on unknown keys and on keys this server does not support",
    )

    p = sub.add_parser("defaultconfig", help="generate full configuration file with defaults")
    config_arg(p, "path to default config file to generate")
    p.add_argument("-b", "--base", default="", help="path to the base config file to use")
    p.add_argument(
        "-d", "--dry-run", action="store_true", help="print the config instead of writing it"
    )

    p = sub.add_parser("defaultenv", help="print full environment variable list with defaults")
    p.add_argument("-b", "--base", default="", help="path to the base config file to use")
    p.add_argument(
        "--base-non-zero-only",
        action="store_true",
        help="only print variables whose base config value differs from the default",
    )

    for name, text in (
        ("gentoken", "generate sample connection JWT for user"),
        ("gensubtoken", "generate sample subscription JWT for user"),
    ):
        p = sub.add_parser(name, help=text)
        config_arg(p)
        p.add_argument("-u", "--user", default="", help="user ID, by default anonymous")
        if name == "gensubtoken":
            p.add_argument("-s", "--channel", default="", help="channel")
        p.add_argument(
            "-t",
            "--ttl",
            type=int,
            default=DEFAULT_TOKEN_TTL,
            help="token TTL in seconds, use -1 for token without expiration",
        )
        p.add_argument(
            "-q", "--quiet", action="store_true", help="only output the token without anything else"
        )

    for name, text in (
        ("checktoken", "check connection JWT"),
        ("checksubtoken", "check subscription JWT"),
    ):
        p = sub.add_parser(name, help=text)
        config_arg(p)
        p.add_argument("token", nargs="?", help="the JWT to check")
    cli_docs.add_parsers(sub)
    return parser


# --------------------------------------------------------------------------------------------
# Helpers


def _config_path(args: argparse.Namespace) -> tuple[str, bool]:
    """(path, explicitly given)."""
    explicit = getattr(args, "sub_config", None) or args.config
    return (explicit or DEFAULT_CONFIG), bool(explicit)


def _load(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    path, explicit = _config_path(args)
    if not explicit and not os.path.exists(path):
        # Like Centrifugo: no default config.json means defaults + env + flags.
        return load_config(None, env=env, flags=flags)
    return load_config(path, env=env, flags=flags)


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in _SUPPORTED_EXTENSIONS:
        raise CliError(
            "output config file must have one of supported extensions: "
            + ", ".join(_SUPPORTED_EXTENSIONS)
        )
    return ext


def _dump(data: dict[str, Any], ext: str) -> str:
    if ext == "json":
        return json.dumps(data, indent=2) + "\n"
    if ext == "toml":
        return tomli_w.dumps(data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write_new_file(path: str, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CliError(f"output config file already exists: {path}") from None
    except OSError as e:
        raise CliError(f"can not write {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _setup_cli_logging() -> None:
    # Config warnings (unknown keys/env vars) go to stderr for every command.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


# --------------------------------------------------------------------------------------------
# Subcommands


def cmd_version() -> int:
    print(f"Centrifugo v{VERSION} (centrifugo-py, Python {platform.python_version()})")
    return 0


def cmd_genconfig(args: argparse.Namespace) -> int:
    path, _ = _config_path(args)
    ext = _extension(path)
    data = {
        "client": {
            "token": {"hmac_secret_key": str(uuid.uuid4())},
            "allowed_origins": [],
        },
        "admin": {
            "enabled": False,
            "password": str(uuid.uuid4()),
            "secret": str(uuid.uuid4()),
        },
        "http_api": {"key": str(uuid.uuid4())},
        "log": {"level": "info"},
    }
    _write_new_file(path, _dump(data, ext), 0o600)
    try:
        load_config(path, env={})
    except ConfigError:
        os.remove(path)
        raise
    return 0


def cmd_checkconfig(args: argparse.Namespace) -> int:
    path, _ = _config_path(args)
    if not args.strict:
        startup.check_resources(load_config(path))
        return 0
    cfg, report = load_config_report(path)
    startup.check_resources(cfg)
    problems = [f"unknown key in config: {key}" for key in report.unknown_keys]
    problems += [finding.message() for finding in report.unsupported]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def cmd_defaultconfig(args: argparse.Namespace) -> int:
    path, _ = _config_path(args)
    ext = _extension(path)
    if not args.dry_run and os.path.exists(path):
        raise CliError("target file already exists")
    data = load_config(args.base).raw if args.base else default_config_dict()
    text = _dump(data, ext)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    _write_new_file(path, text, 0o644)
    return 0


def cmd_defaultenv(args: argparse.Namespace) -> int:
    cfg = load_config(args.base) if args.base else None
    # Compare with a loaded (inheritance-resolved) default config, like the base is.
    defaults = dict(default_env(load_config(None, env={})))
    for name, value in default_env(cfg):
        if args.base_non_zero_only and cfg is not None and defaults.get(name) == value:
            continue
        print(f"{name}={value}")
    return 0


def _print_token(args: argparse.Namespace, sample: cli_tokens.SampleToken) -> int:
    if args.quiet:
        sys.stdout.write(sample.token)
    else:
        print(sample.text)
    return 0


def cmd_gentoken(args: argparse.Namespace) -> int:
    return _print_token(args, cli_tokens.sample_token(_load(args), args.user, args.ttl))


def cmd_gensubtoken(args: argparse.Namespace) -> int:
    cfg = _load(args)
    return _print_token(args, cli_tokens.sample_token(cfg, args.user, args.ttl, args.channel))


def cmd_checktoken(args: argparse.Namespace, subscription: bool) -> int:
    cfg = _load(args)
    command = "checksubtoken" if subscription else "checktoken"
    if not args.token:
        raise CliError(f"provide token to check [centrifugo {command} <TOKEN>]")
    check = cli_tokens.check_token(cfg, args.token, subscription)
    print(check.text, file=sys.stdout if check.valid else sys.stderr)
    return 0 if check.valid else 1


# --------------------------------------------------------------------------------------------
# Running the server (app/hosting/)


def _workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return int(args.workers)
    env_workers = os.environ.get("WEB_CONCURRENCY", "").strip()
    try:
        return int(env_workers) if env_workers else 1
    except ValueError:
        raise CliError(f"invalid WEB_CONCURRENCY: {env_workers!r}") from None


def cmd_run(args: argparse.Namespace, flags: dict[str, Any]) -> int:
    if args.port is not None:
        flags.setdefault("http_server.port", args.port)
    if args.address is not None:
        flags.setdefault("http_server.address", args.address)
    cfg = _load(args, flags=flags)
    startup.run(cfg, _workers(args), args.max_requests, args.max_requests_jitter)
    return 0


# --------------------------------------------------------------------------------------------


def _dispatch(argv: list[str]) -> int:
    rest, flags = _split_dotted_flags(argv)
    args = _build_parser().parse_args(rest)
    command = args.command
    if flags and command is not None:
        raise CliError(f"unknown flag for {command}: --{next(iter(flags))}")
    if command is None:
        return cmd_run(args, flags)
    if command == "version":
        return cmd_version()
    if command == "genconfig":
        return cmd_genconfig(args)
    if command == "checkconfig":
        return cmd_checkconfig(args)
    if command == "defaultconfig":
        return cmd_defaultconfig(args)
    if command == "defaultenv":
        return cmd_defaultenv(args)
    if command == "gentoken":
        return cmd_gentoken(args)
    if command == "gensubtoken":
        return cmd_gensubtoken(args)
    if command in ("checktoken", "checksubtoken"):
        return cmd_checktoken(args, subscription=command == "checksubtoken")
    if command in cli_docs.COMMANDS:
        return cli_docs.run(command, args)
    raise CliError(f"unknown command: {command}")  # pragma: no cover - argparse guards


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``centrifugo`` console script; returns the exit code."""
    _setup_cli_logging()
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except (
        CliError,
        ConfigError,
        cli_tokens.TokenCommandError,
        startup.StartupError,
        listeners.ListenError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # argparse --help, gunicorn's arbiter exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # last resort: one line, never a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
