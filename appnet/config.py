"""
appnet's configuration: TOML read with L{tomllib}, checked against one schema.

No file is needed: the built-in defaults serve a working suite with data in
C{./appnet-data}, listening on 127.0.0.1, each service on its standard port
+ 10000. A file only overrides what it names::

    hostname = "mail.example.org"
    data_dir = "/var/lib/appnet"

    [pop3]
    listen = ["tcp:110:interface=0.0.0.0"]
    trace = true

Every key is checked: an unknown key or a bad value raises L{ConfigError}
naming the key, the value and what is allowed, before anything starts.
Listen addresses are Twisted endpoint strings; C{listen_tls} endpoints are
wrapped in TLS by appnet (implicit TLS), using L{appnet.tls}.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from appnet.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "SCHEMA", "SERVICES"]


@dataclass(frozen=True)
class Key:
    """
    One configuration key: its default and how a value is checked.

    @ivar default: the built-in default
    @ivar check: returns the normalised value or raises C{ValueError}
    @ivar allowed: the short description shown when C{check} refuses
    @ivar doc: one line for docs/config.md
    """

    default: Any
    check: Callable[[Any], Any]
    allowed: str
    doc: str = ""


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError


def _str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ValueError


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError
        return v

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(v: Any) -> Any:
        if v in ("", None):
            return None
        return check(v)

    return wrapped


def _hostname(v: Any) -> str:
    v = _str(v)
    labels = v.rstrip(".").split(".")
    if not v or len(v) > 253 or not all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() and c.isascii() or c == "-" for c in label)
        for label in labels
    ):
        raise ValueError
    return v.lower().rstrip(".")


def _endpoints(v: Any) -> list[str]:
    """A list of server endpoint strings (a single string is accepted too)."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ValueError
    for s in v:
        kind = s.split(":", 1)[0]
        if kind not in _ENDPOINT_KINDS:
            raise ValueError
        if kind in ("tcp", "tcp6", "udp", "ssl"):
            port = s.split(":")[1] if s.count(":") else ""
            if not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError
    return list(v)


_ENDPOINT_KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd", "udp")


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError
        return v

    return check


def _size(v: Any) -> int | None:
    """Bytes as an int, or a string like C{"10M"}, C{"2G"}; 0/"" means none."""
    if v in ("", 0, None):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, str):
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        s = v.strip().upper().removesuffix("B")
        if s and s[-1] in units and s[:-1].isdigit() and int(s[:-1]) > 0:
            return int(s[:-1]) * units[s[-1]]
        if s.isdigit() and int(s) > 0:
            return int(s)
    raise ValueError


_LISTEN_DOC = "Twisted server endpoint strings, e.g. tcp:110:interface=0.0.0.0"
_SIZE_ALLOWED = 'a positive byte count or a size like "512M", "2G"; 0 for none'


def _service_keys(port: int, tls_port: int | None, **extra: Key) -> dict[str, Key]:
    """The keys every TCP service shares, plus its own."""
    keys = {
        "enabled": Key(True, _bool, "true or false", "start this service"),
        "listen": Key(
            [f"tcp:{port}:interface=127.0.0.1"],
            _endpoints,
            "a list of endpoint strings (tcp:PORT:interface=ADDR, tcp6:, unix:, systemd:)",
            _LISTEN_DOC,
        ),
        "trace": Key(
            False,
            _bool,
            "true or false",
            "log every line of every session, annotated, passwords redacted",
        ),
        "idle_timeout": Key(
            600, _int_range(1, 86400), "seconds, 1 to 86400", "close idle sessions"
        ),
        "max_connections": Key(
            1000, _int_range(1, 1_000_000), "1 to 1000000", "concurrent sessions"
        ),
        "max_connections_per_address": Key(
            50, _int_range(1, 1_000_000), "1 to 1000000", "concurrent sessions per client address"
        ),
    }
    if tls_port is not None:
        keys["listen_tls"] = Key(
            [f"tcp:{tls_port}:interface=127.0.0.1"],
            _endpoints,
            "a list of endpoint strings; appnet wraps them in TLS (implicit TLS)",
            "implicit-TLS listeners (" + _LISTEN_DOC + ")",
        )
    keys.update(extra)
    return keys


#: Section name -> key -> L{Key}. Top-level keys live in section C{""}.
SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "hostname": Key(
            "localhost", _hostname, "a DNS host name", "this host's name (greetings, TLS cert)"
        ),
        "data_dir": Key(
            "./appnet-data", _str, "a directory path", "where users, mail and files live"
        ),
    },
    "accounts": {
        "failed_login_delay": Key(
            1.0,
            lambda v: float(_int_range(0, 60)(v)) if isinstance(v, int) else _delay(v),
            "seconds, 0 to 60",
            "how long a failed login waits before it is answered",
        ),
        "default_quota": Key(None, _size, _SIZE_ALLOWED, "per-user byte quota"),
    },
    "files": {
        "incoming": Key(
            False,
            _bool,
            "true or false",
            "offer public/incoming/, where anonymous may upload but not list or read",
        ),
        "incoming_limit": Key(None, _size, _SIZE_ALLOWED, "byte limit of public/incoming/"),
    },
    "tls": {
        "cert": Key(
            None, _optional(_str), "a PEM file path", "certificate chain (PEM); none: self-signed"
        ),
        "key": Key(None, _optional(_str), "a PEM file path", "private key (PEM)"),
    },
    "pop3": _service_keys(
        10110,
        10995,
        max_line=Key(
            8192,
            _int_range(512, 1 << 20),
            "512 to 1048576",
            "longest command line accepted (RFC 2449 allows 255 octets)",
        ),
        plaintext_auth=Key(
            "tls-or-loopback",
            _choice("tls-or-loopback", "tls", "always"),
            '"tls-or-loopback", "tls" or "always"',
            "where USER/PASS and AUTH PLAIN are accepted",
        ),
    ),
}

#: Services in start-up order; each has a section in L{SCHEMA} and a package.
SERVICES = ("pop3",)


def _delay(v: Any) -> float:
    if isinstance(v, float) and 0 <= v <= 60:
        return v
    raise ValueError


class Config:
    """
    A checked configuration: C{config["pop3"]["listen"]}, C{config.hostname}.

    Build one with L{load_config}.
    """

    def __init__(self, values: dict[str, dict[str, Any]]) -> None:
        self._values = values

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self._values[section]

    @property
    def hostname(self) -> str:
        return self._values[""]["hostname"]

    @property
    def data_dir(self) -> str:
        return self._values[""]["data_dir"]

    def path(self, *parts: str) -> str:
        """A path under the data directory."""
        return os.path.join(self.data_dir, *parts)

    def replace(self, section: str, **values: Any) -> Config:
        """
        Return a copy with some keys of one section replaced (checked).

        @raise ConfigError: a key is unknown or a value bad
        """
        raw = copy.deepcopy(self._values)
        for key, value in values.items():
            raw[section][key] = _check(section, key, value)
        return Config(raw)


def _check(section: str, key: str, value: Any) -> Any:
    dotted = f"{section}.{key}" if section else key
    spec = SCHEMA.get(section, {}).get(key)
    if spec is None:
        known = ", ".join(sorted(SCHEMA.get(section, {}))) or "none"
        raise ConfigError(dotted, value, f"unknown key (known here: {known})")
    try:
        return spec.check(value)
    except (ValueError, TypeError):
        raise ConfigError(dotted, value, spec.allowed) from None


def load_config(
    path: str | None = None,
    data_dir: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """
    Read and check the configuration.

    @param path: a TOML file, or L{None} for built-in defaults only
    @param data_dir: overrides C{data_dir} (the C{--data} option)
    @param overrides: section -> key -> value, applied last (command-line
        options such as C{appnet-pop3 --listen})
    @raise ConfigError: unknown section or key, bad value, unreadable file
    """
    values = {
        section: {k: copy.deepcopy(spec.default) for k, spec in keys.items()}
        for section, keys in SCHEMA.items()
    }
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError("--config", path, f"a readable TOML file ({e.strerror})")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", path, f"valid TOML ({e})")
    for name, value in raw.items():
        if isinstance(value, dict):
            if name not in SCHEMA or name == "":
                known = ", ".join(s for s in SCHEMA if s)
                raise ConfigError(name, "[section]", f"unknown section (known: {known})")
            for key, v in value.items():
                values[name][key] = _check(name, key, v)
        else:
            values[""][name] = _check("", name, value)
    if data_dir is not None:
        values[""]["data_dir"] = _check("", "data_dir", data_dir)
    for section, keys in (overrides or {}).items():
        for key, v in keys.items():
            values[section][key] = _check(section, key, v)
    tls = values["tls"]
    if (tls["cert"] is None) != (tls["key"] is None):
        raise ConfigError(
            "tls.cert" if tls["cert"] is None else "tls.key",
            None,
            "tls.cert and tls.key must be given together",
        )
    return Config(values)


def schema_markdown() -> str:
    """
    The reference table of every key, as docs/config.md embeds it
    (regenerate with C{python -m appnet.config}).
    """
    out: list[str] = []
    for section, keys in SCHEMA.items():
        out.append(f"### {'top level' if not section else '[' + section + ']'}\n")
        out.append("| key | default | allowed | what it does |")
        out.append("|---|---|---|---|")
        for name, key in keys.items():
            default = "none" if key.default is None else repr(key.default).replace("'", '"')
            default = default.replace("True", "true").replace("False", "false")
            out.append(f"| `{name}` | `{default}` | {key.allowed} | {key.doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(schema_markdown())
