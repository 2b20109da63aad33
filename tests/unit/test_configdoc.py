"""`centrifugo configdoc`: the documentation read from the schema's attribute docstrings, its
Markdown layout (Centrifugo's configdoc.go), and that it names exactly the keys the config
loader accepts, with the variables the loader reads."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, fields, is_dataclass

import pytest

from app.cli import main
from app.cli_docs import markdown
from app.config import load_config, schema, schema_channel, schema_consumers, schema_parts
from app.config.docs import config_docs, field_docs, iter_docs
from app.config.env import env_index, known_env_vars, leaves
from app.config.schema import Config, HTTPServerConfig
from app.config.schema_channel import ChannelConfig, ChannelOptions
from app.config.schema_parts import NamedProxyConfig, ProxyConfig, TLSConfig
from app.config.section import Section, key_specs
from app.config.support import finding_for

_HEADER = re.compile(r"^(#+) `([^`]+)`$", re.M)


def _entries(text: str) -> dict[str, tuple[int, str]]:
    """field -> (header level, the text up to the next header)."""
    out: dict[str, tuple[int, str]] = {}
    matches = list(_HEADER.finditer(text))
    for m, after in zip(matches, matches[1:] + [None], strict=True):
        body = text[m.end() : after.start() if after else len(text)].strip("\n")
        assert m.group(2) not in out, f"{m.group(2)} documented twice"
        out[m.group(2)] = (len(m.group(1)), body)
    return out


def _text(cls: type, key: str) -> str:
    """A field's docstring as the doc shows it: the source's line wrapping undone."""
    return " ".join(field_docs(cls)[key].split())


@dataclass(frozen=True, slots=True)
class _Sample(Section):
    documented: int = 0
    """Two
    lines with `code`."""
    undocumented: str = ""
    # A comment is not a docstring, and a docstring belongs to the field just above it.
    after_comment: bool = False
    """Only this one."""


# --------------------------------------------------------------------------------------------
# The reader


def test_reader_finds_attribute_docstrings() -> None:
    assert field_docs(_Sample) == {
        "documented": "Two\nlines with `code`.",
        "undocumented": "",
        "after_comment": "Only this one.",
    }
    assert field_docs(TLSConfig)["enabled"].startswith("Turns TLS on")


def test_reader_inherits_a_base_class_field_docs() -> None:
    # NamedProxyConfig declares only `name`; the proxy keys are ProxyConfig's.
    named, base = field_docs(NamedProxyConfig), field_docs(ProxyConfig)
    assert named["endpoint"] == base["endpoint"] != ""
    assert named["name"] != "" and "name" not in base


# --------------------------------------------------------------------------------------------
# Markdown layout (internal/cli/configdoc.go convertDocsToMarkdown)


def test_markdown_leaf_key_layout() -> None:
    doc = _entries(markdown())
    level, body = doc["channel.history_meta_ttl"]
    assert level == 2
    assert body == (
        "Type: `Duration`. Default: `720h0m0s`\n\n"
        "Env: `CENTRIFUGO_CHANNEL_HISTORY_META_TTL`\n\n" + _text(ChannelConfig, "history_meta_ttl")
    )
    level, body = doc["channel.max_length"]
    assert body.startswith("Type: `int`. Default: `255`\n\nEnv: `CENTRIFUGO_CHANNEL_MAX_LENGTH`")
    assert doc["channel.private_prefix"][1].startswith("Type: `string`. Default: `$`\n\n")
    assert doc["http_server.port"] == (
        2,
        "Type: `int`. Default: `8000`\n\nEnv: `CENTRIFUGO_HTTP_SERVER_PORT`\n\n"
        + (_text(HTTPServerConfig, "port") or "No documentation available."),
    )
    assert doc["engine.redis.address"][1].startswith(
        'Type: `[]string`. Default: `["redis://127.0.0.1:6379"]`'
    )
    assert doc["proxies[].http.static_headers"][1].startswith(
        "Type: `map[string]string`. Default: `{}`"
    )


def test_markdown_sections_and_lists() -> None:
    doc = _entries(markdown())
    assert doc["http_server.tls"][0] == 2
    assert doc["http_server.tls"][1].startswith("Type: `TLSConfig` object\n\n")  # no default/env
    assert doc["http_server.tls.enabled"][0] == 3
    assert doc["channel.namespaces"] == (
        2,
        "Type: `[]ChannelOptions` object. Default: `[]`\n\n"
        "Env: `CENTRIFUGO_CHANNEL_NAMESPACES`\n\n" + _text(ChannelConfig, "namespaces"),
    )
    # Item keys: per-item variables with Centrifugo's <NAME>, none for the name itself.
    assert doc["channel.namespaces[].presence"] == (
        3,
        "Type: `bool`. Default: `false`\n\n"
        "Env: `CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_PRESENCE`\n\n"
        + _text(ChannelOptions, "presence"),
    )
    assert doc["channel.namespaces[].name"][1].startswith('Type: `string`. Default: `""`\n\n')
    assert "Env:" not in doc["channel.namespaces[].name"][1]
    assert (
        "Env: `CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_MAP_MODE`"
        in doc["channel.namespaces[].map.mode"][1]
    )
    assert (
        "Env: `CENTRIFUGO_PROXIES_<NAME>_HTTP_TLS_ENABLED`" in doc["proxies[].http.tls.enabled"][1]
    )
    assert (
        "Env: `CENTRIFUGO_RPC_NAMESPACES_<NAME>_PROXY_NAME`"
        in doc["rpc.namespaces[].proxy_name"][1]
    )
    # without_namespace is not a list item: plain variables, and no `name` key.
    assert (
        "Env: `CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_PRESENCE`"
        in doc["channel.without_namespace.presence"][1]
    )
    assert "channel.without_namespace.name" not in doc


def test_markdown_says_which_keys_are_not_supported() -> None:
    doc = _entries(markdown())
    marked = 0
    for field, (_, body) in doc.items():
        finding = finding_for(field)
        if finding is None:
            assert "Not supported by centrifugo-py" not in body, field
            continue
        assert f"Not supported by centrifugo-py: {finding.reason}" in body, field
        marked += 1
    assert marked > 0
    assert "stops the server from starting" in doc["http_server.tls_autocert.enabled"][1]


def test_section_filter_and_base_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configdoc", "-m", "-s", "http", "-l", "1"]) == 0
    doc = _entries(capsys.readouterr().out)
    tops = {f for f in doc if "." not in f}
    assert tops == {"http_server", "http_api", "http_stream"}
    assert all(f.split(".")[0] in tops for f in doc)
    assert doc["http_server"][0] == 2 and doc["http_server.tls.enabled"][0] == 4

    # The level is capped at 6 (Markdown has no deeper header).
    doc = _entries(markdown("proxies", base_level=5))
    assert doc["proxies"][0] == 6 and doc["proxies[].http.tls.enabled"][0] == 6

    # As in Centrifugo, the filter is a prefix of the top-level key: a dotted path finds nothing.
    assert main(["configdoc", "--markdown", "--section", "client.token"]) == 0
    assert capsys.readouterr().out.strip() == ""


# --------------------------------------------------------------------------------------------
# checkconfig and configdoc agree


def _accepted_keys() -> set[str]:
    """Every key the loader accepts: env.leaves over Config (what files, env and flags set)
    plus the keys of each item of a list of sections. Opaque kinds (consumers items, maps)
    take any content and are one key each."""
    keys = set()
    for dotted, (_, spec) in leaves().items():
        keys.add(dotted)
        if spec.kind == "seclist":
            keys |= {f"{dotted}[].{inner}" for inner in leaves(spec.cls, True)}
    return keys


def _sections(cls: type = Config, item: bool = False, prefix: str = "") -> set[str]:
    out = set()
    for name, spec in key_specs(cls, item).items():
        if spec.kind == "section":
            out.add(prefix + name)
            out |= _sections(spec.cls, False, prefix + name + ".")
        elif spec.kind == "seclist":
            out.add(prefix + name)
            out |= _sections(spec.cls, True, prefix + name + "[].")
    return out


def test_every_accepted_key_is_documented_and_nothing_else() -> None:
    doc = _entries(markdown())
    accepted = _accepted_keys()
    assert len(accepted) > 700
    assert sorted(accepted - set(doc)) == []
    # Every other entry is a section (or list of sections) holding accepted keys.
    assert set(doc) - accepted == _sections() - accepted
    assert {e.field for e in iter_docs()} == set(doc)


def test_documented_variables_are_the_loaders() -> None:
    documented = {e.env for e in iter_docs() if e.env and "<NAME>" not in e.env}
    assert documented == set(known_env_vars())
    by_field = {e.field: e for e in iter_docs()}
    for dotted, (_, spec) in leaves().items():
        if spec.kind != "seclist":
            continue
        prefix = f"CENTRIFUGO_{dotted.replace('.', '_').upper()}_<NAME>_"
        for option, (path, _) in env_index(spec.cls, True).items():
            entry = by_field[f"{dotted}[].{'.'.join(path)}"]
            assert entry.env == ("" if path == ("name",) else prefix + option)


def test_documented_item_variables_override_items() -> None:
    # The <NAME> forms, read by the real loader.
    env = {
        "CENTRIFUGO_CHANNEL_NAMESPACES": '[{"name": "chat"}]',
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_PRESENCE": "true",
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_HISTORY_SIZE": "10",
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_HISTORY_TTL": "30s",
        "CENTRIFUGO_RPC_NAMESPACES": '[{"name": "calls"}]',
        "CENTRIFUGO_RPC_NAMESPACES_CALLS_PROXY_NAME": "other",
        "CENTRIFUGO_PROXIES": '[{"name": "other", "endpoint": "http://127.0.0.1:1"}]',
        "CENTRIFUGO_PROXIES_OTHER_TIMEOUT": "3s",
    }
    cfg = load_config(None, env=env)
    chat = cfg.namespace("chat")
    assert chat is not None and chat.presence
    assert (chat.history_size, chat.history_ttl) == (10, 30.0)
    assert cfg.rpc.namespaces[0].proxy_name == "other"
    assert cfg.proxies[0].timeout == 3.0


# --------------------------------------------------------------------------------------------
# Completeness: no key without a description


def _section_classes() -> list[type]:
    out = []
    for module in (schema, schema_channel, schema_parts, schema_consumers):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and is_dataclass(cls) and issubclass(cls, Section):
                out.append(cls)
    return out


@pytest.mark.parametrize("cls", _section_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_schema_field_has_a_docstring(cls: type) -> None:
    docs = field_docs(cls)
    keys = [f.name for f in fields(cls) if not f.metadata.get("internal")]
    assert [k for k in keys if not docs[k].strip()] == []


def test_every_documented_key_has_a_description() -> None:
    assert [e.field for e in iter_docs() if not e.description] == []
    assert len(config_docs()) == len(key_specs(Config, False))
