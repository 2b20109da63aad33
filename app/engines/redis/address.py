"""What one shard is: Centrifugo's Redis address forms and section keys read into a
`ShardSpec` (standalone, Sentinel-managed or Cluster; credentials, TLS dials, client names).

Pure: no connection is made here; a setting that can never work is refused with
RedisConfigError, one line naming the key, before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from app.config import RedisConfig
from app.engines.redis.tls import TLSDial, TLSSettingError, dial_from_config


class RedisConfigError(ValueError):
    pass


@dataclass(slots=True)
class ShardSpec:
    kind: str = "standalone"  # standalone | sentinel | cluster
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    db: int = 0
    username: str = ""
    password: str = ""
    tls: TLSDial | None = None  # data connections (tls.py: `tls`, rediss://)
    sentinel_tls: TLSDial | None = None  # connections to the Sentinels
    client_name: str = ""  # CLIENT SETNAME on every data connection ("": none)
    sentinel_client_name: str = ""  # the same on connections to the Sentinels
    seeds: list[tuple[str, int]] = field(default_factory=list)  # cluster or sentinel nodes
    master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        host, port = text, ""
    try:
        return host.strip("[]") or "127.0.0.1", int(port) if port else default_port
    except ValueError as e:
        raise RedisConfigError(f"invalid redis address {text!r}") from e


def _go_bool(q: dict[str, str], key: str) -> bool:
    """A query option read as Go's strconv.ParseBool does (Centrifugo's address options)."""
    text = q.get(key)
    if text is None:
        return False
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise RedisConfigError(f"invalid {key} value: {text!r}")


def _dials(
    rcfg: RedisConfig, where: str, tls_on: bool = False, sentinel_tls_on: bool = False
) -> tuple[TLSDial | None, TLSDial | None]:
    """(data, Sentinel) dials of a section; the address may turn TLS on with defaults."""
    try:
        return (
            dial_from_config(rcfg.tls, f"{where}.tls", tls_on),
            dial_from_config(rcfg.sentinel_tls, f"{where}.sentinel_tls", sentinel_tls_on),
        )
    except TLSSettingError as e:
        raise RedisConfigError(str(e)) from None


def _client_name(value: str, key: str) -> str:
    """`value` if Redis would take it in CLIENT SETNAME. Redis refuses a name with spaces,
    newlines or any byte outside '!'..'~' (networking.c), so no connection could ever be
    made: start-up refuses with one line naming the key instead (Centrifugo fails creating
    its rueidis client, whose handshake sends the name, the same way)."""
    if any(not "!" <= ch <= "~" for ch in value):
        raise RedisConfigError(
            f"{key}: {value!r} is not a valid Redis client name "
            "(printable ASCII, no spaces or special characters)"
        )
    return value


def _names(rcfg: RedisConfig, where: str) -> tuple[str, str]:
    """The section's (client_name, sentinel_client_name), checked. Only the section's keys name
    connections: Centrifugo's address options know no client_name (redisshard.go
    optionsFromAddress). sentinel_client_name also applies to a redis+sentinel:// address,
    as sentinel_user, sentinel_password and sentinel_tls do here (Centrifugo reads it with
    sentinel_address only, and would drop it silently)."""
    return (
        _client_name(rcfg.client_name, f"{where}.client_name"),
        _client_name(rcfg.sentinel_client_name, f"{where}.sentinel_client_name"),
    )


def parse_address(address: str, rcfg: RedisConfig, where: str = "redis") -> ShardSpec:
    """Centrifugo's address forms: redis://, rediss://, unix://, redis+sentinel://,
    rediss+sentinel://, redis+cluster://, or a bare host:port. `where` names the section in
    error messages ("engine.redis")."""
    if "://" not in address:
        address = "redis://" + address
    u = urlsplit(address)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    extra = parse_qs(u.query).get("addr", [])
    name, sentinel_name = _names(rcfg, where)
    spec = ShardSpec(
        db=rcfg.db,
        username=rcfg.user,
        password=rcfg.password,
        client_name=name,
        sentinel_client_name=sentinel_name,
    )
    if u.username:
        spec.username = unquote(u.username)
    if u.password:
        spec.password = unquote(u.password)
    if "db" in q:
        spec.db = int(q["db"])
    scheme = u.scheme.lower()
    if scheme == "unix":
        # No TLS over a unix socket (Centrifugo dials it plain whatever `tls` says).
        spec.unix_path = u.path
        return spec
    if scheme not in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+sentinel"):
        raise RedisConfigError(f"unsupported redis address scheme {u.scheme!r}")
    # rediss+sentinel:// is TLS to the Sentinels and to the master alike (Centrifugo).
    rediss = scheme.startswith("rediss")
    spec.tls, spec.sentinel_tls = _dials(
        rcfg,
        where,
        tls_on=rediss or _go_bool(q, "tls_enabled"),
        sentinel_tls_on=rediss or _go_bool(q, "sentinel_tls_enabled"),
    )
    default_port = 26379 if "sentinel" in scheme else 6379
    spec.host, spec.port = _host_port(u.netloc.rpartition("@")[2] or "127.0.0.1", default_port)
    if u.path and u.path.strip("/").isdigit():
        spec.db = int(u.path.strip("/"))
    if "sentinel" in scheme:
        spec.kind = "sentinel"
        spec.seeds = [(spec.host, spec.port)] + [_host_port(a, 26379) for a in extra]
        spec.master_name = q.get("sentinel_master_name", rcfg.sentinel_master_name)
        spec.sentinel_username = q.get("sentinel_user", rcfg.sentinel_user)
        spec.sentinel_password = q.get("sentinel_password", rcfg.sentinel_password)
        if not spec.master_name:
            raise RedisConfigError("redis sentinel address needs sentinel_master_name")
    elif scheme == "redis+cluster":
        spec.kind = "cluster"
        spec.seeds = [(spec.host, spec.port)] + [_host_port(a, 6379) for a in extra]
    return spec


def specs_from_config(rcfg: RedisConfig, where: str = "redis") -> list[ShardSpec]:
    """The shards of one Redis section; RedisConfigError (one line naming the key, the
    section being `where`) for an address, a TLS setting or a client name that cannot be used."""
    name, sentinel_name = _names(rcfg, where)
    if rcfg.cluster_address:
        seeds = [_host_port(a.split("://")[-1], 6379) for a in rcfg.cluster_address]
        tls, _ = _dials(rcfg, where)
        return [
            ShardSpec(
                kind="cluster",
                host=seeds[0][0],
                port=seeds[0][1],
                seeds=seeds,
                username=rcfg.user,
                password=rcfg.password,
                tls=tls,
                client_name=name,
            )
        ]
    if rcfg.sentinel_address:
        seeds = [_host_port(a.split("://")[-1], 26379) for a in rcfg.sentinel_address]
        tls, sentinel_tls = _dials(rcfg, where)
        return [
            ShardSpec(
                kind="sentinel",
                seeds=seeds,
                master_name=rcfg.sentinel_master_name,
                sentinel_username=rcfg.sentinel_user,
                sentinel_password=rcfg.sentinel_password,
                username=rcfg.user,
                password=rcfg.password,
                db=rcfg.db,
                tls=tls,
                sentinel_tls=sentinel_tls,
                client_name=name,
                sentinel_client_name=sentinel_name,
            )
        ]
    return [parse_address(a, rcfg, where) for a in rcfg.address]
