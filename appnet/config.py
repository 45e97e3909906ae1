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


def _port_range(v: Any) -> tuple[int, int]:
    if not isinstance(v, str):
        raise ValueError
    low, sep, high = v.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError
    return (lo, hi)


def _ipv4(v: Any) -> str:
    import ipaddress

    if not isinstance(v, str):
        raise ValueError
    return str(ipaddress.IPv4Address(v))


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


def _virtual_dir(v: Any) -> str:
    """A virtual directory path of the filesystem store (C{/}, C{/boot})."""
    v = _str(v)
    if not v.startswith("/") or "\\" in v or "\0" in v or ".." in v.split("/"):
        raise ValueError
    return v


def _udp_endpoints(v: Any) -> list[str]:
    """A list of C{udp:PORT[:interface=ADDR]} strings."""
    v = _endpoints(v)
    if not all(s.startswith("udp:") for s in v):
        raise ValueError
    return v



def _stream_endpoints(v: Any) -> list[str]:
    """Endpoint strings for a stream (TCP) listener: C{udp:} is refused."""
    v = _endpoints(v)
    if any(s.startswith("udp:") for s in v):
        raise ValueError
    return v


def _ip(v: Any) -> str:
    import ipaddress

    return str(ipaddress.ip_address(_str(v)))


def _cidrs(v: Any) -> list[str]:
    """A list of networks (C{"10.0.0.0/8"}, C{"::1/128"}; a bare address is one host)."""
    import ipaddress

    if not isinstance(v, list):
        raise ValueError
    return [str(ipaddress.ip_network(_str(c), strict=False)) for c in v]


def _dns_servers(v: Any) -> list[str]:
    """A list of C{"IP"}, C{"IP:PORT"} or C{"[IPv6]:PORT"} strings."""
    import ipaddress

    if not isinstance(v, list):
        raise ValueError
    for item in v:
        text = _str(item)
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            host, port = text, "53"
        ipaddress.ip_address(host)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    return list(v)


def _rr_lines(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise ValueError
    return list(v)


_SIZE_ALLOWED = 'a positive byte count or a size like "512M", "2G"; 0 for none'


def _domains(v: Any) -> list[str]:
    """A list of DNS domain names (lower-cased, no trailing dot)."""
    if not isinstance(v, list):
        raise ValueError
    return [_hostname(d) for d in v]


def _host_port(v: Any) -> str:
    """C{""} (none), C{"host"} or C{"host:port"} (C{"[IPv6]:port"})."""
    import ipaddress

    v = _str(v).strip()
    if not v:
        return ""
    if v.startswith("["):
        host, sep, port = v[1:].partition("]")
        ipaddress.IPv6Address(host)
        port = port[1:] if port.startswith(":") else port
        if sep and not port:
            return v
    else:
        host, _, port = v.partition(":")
        _hostname(host)
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError
    return v


def _intervals(v: Any) -> list[int]:
    """A non-empty list of positive seconds."""
    if not isinstance(v, list) or not v:
        raise ValueError
    return [_int_range(1, 86400 * 7)(i) for i in v]



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
        "auth_cache_ttl": Key(
            300,
            _int_range(0, 86400),
            "seconds, 0 to 86400 (0 disables)",
            "remember a verified password this long (keyed HMAC in memory), so repeated logins skip scrypt",
        ),
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
    "mail": {
        "journal": Key(
            True,
            _bool,
            "true or false",
            "deliver through a write-ahead journal: one fdatasync per batch of messages "
            "instead of two fsyncs per message (see docs/smtp.md, Durability)",
        ),
        "journal_checkpoint": Key(
            1.0,
            lambda v: float(_int_range(0, 60)(v)) if isinstance(v, int) else _delay(v),
            "seconds, 0 to 60",
            "how long a journalled message may wait before its maildir file is synced and "
            "its journal record dropped",
        ),
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
    "smtp": _service_keys(
        10025,
        10465,
        submission_listen=Key(
            ["tcp:10587:interface=127.0.0.1"],
            _stream_endpoints,
            "a list of endpoint strings (tcp:PORT:interface=ADDR, tcp6:, unix:, systemd:)",
            "message submission listeners (RFC 6409: AUTH required, STARTTLS offered)",
        ),
        local_domains=Key(
            [],
            _domains,
            "a list of DNS domain names",
            "domains whose mail is delivered here; empty: localhost and the hostname",
        ),
        max_message_size=Key(
            35 << 20, _size, _SIZE_ALLOWED, "largest message accepted (advertised in SIZE)"
        ),
        max_recipients=Key(
            100,
            _int_range(100, 100_000),
            "100 to 100000 (RFC 5321 4.5.3.1.8 asks for at least 100)",
            "recipients per message; one more gets 452 4.5.3",
        ),
        max_line=Key(
            1000,
            _int_range(1000, 1 << 20),
            "1000 to 1048576 (octets with CRLF; RFC 5321 4.5.3.1.6 asks for 1000)",
            "longest command or message line accepted",
        ),
        idle_timeout=Key(
            300,
            _int_range(1, 86400),
            "seconds, 1 to 86400",
            "close sessions idle this long (RFC 5321 4.5.3.2 asks for at least 5 minutes)",
        ),
        plaintext_auth=Key(
            "tls-or-loopback",
            _choice("tls-or-loopback", "tls", "always"),
            '"tls-or-loopback", "tls" or "always"',
            "where AUTH PLAIN and LOGIN are accepted",
        ),
        smarthost=Key(
            "",
            _host_port,
            '"" or "host[:port]"',
            "send all outbound mail through this host; empty: MX lookup",
        ),
        relay_port=Key(
            25, _int_range(1, 65535), "1 to 65535", "port of the MX hosts outbound mail goes to"
        ),
        relay_tls=Key(
            "opportunistic",
            _choice("opportunistic", "required", "none"),
            '"opportunistic", "required" or "none"',
            "STARTTLS when relaying outbound mail",
        ),
        queue_lifetime=Key(
            432000,
            _int_range(60, 86400 * 30),
            "seconds, 60 to 2592000",
            "give up on an outbound message after this long and bounce it (RFC 5321 4.5.4.1: 4-5 days)",
        ),
        retry_intervals=Key(
            [60, 300, 900, 1800, 3600],
            _intervals,
            "a non-empty list of seconds, each 1 to 604800",
            "waits between delivery attempts; the last repeats",
        ),
        resolvers=Key(
            [],
            _dns_servers,
            'a list of "IP" or "IP:PORT" strings',
            "DNS servers for MX lookups; empty: the system's resolv.conf",
        ),
    ),
    "tftp": {
        "enabled": Key(True, _bool, "true or false", "start this service"),
        "listen": Key(
            ["udp:10069:interface=127.0.0.1"],
            _udp_endpoints,
            "a list of udp:PORT:interface=ADDR strings",
            "UDP addresses of the well-known port, e.g. udp:69:interface=0.0.0.0",
        ),
        "trace": Key(
            False, _bool, "true or false", "log one line per transfer (options, bytes, duration)"
        ),
        "root": Key(
            "/", _virtual_dir, 'a path in public/ starting with "/"', "directory of public/ served"
        ),
        "writable": Key(
            False,
            _bool,
            "true or false",
            "accept uploads (WRQ), create-only, into upload_dir; needs [files] incoming",
        ),
        "upload_dir": Key(
            "/incoming", _virtual_dir, 'a path starting with "/"', "where uploads go"
        ),
        "timeout": Key(1, _int_range(1, 255), "seconds, 1 to 255", "retransmission timeout"),
        "retries": Key(5, _int_range(0, 100), "0 to 100", "retransmissions before giving up"),
        "max_blksize": Key(65464, _int_range(8, 65464), "8 to 65464", "largest blksize granted"),
        "max_windowsize": Key(64, _int_range(1, 65535), "1 to 65535", "largest windowsize granted"),
        "max_transfers": Key(1000, _int_range(1, 100_000), "1 to 100000", "concurrent transfers"),
        "max_transfers_per_client": Key(
            10, _int_range(1, 100_000), "1 to 100000", "concurrent transfers per client address"
        ),
        "max_file_size": Key(None, _size, _SIZE_ALLOWED, "largest upload accepted"),
        "threads": Key(
            1,
            _int_range(0, 10_000),
            "0 to 10000",
            "downloads run on a thread of their own while no more transfers are live; 0: never",
        ),
        "busy_poll": Key(
            50,
            _int_range(0, 10_000),
            "microseconds, 0 to 10000",
            "a lone transfer thread polls this long for the next ACK before sleeping; 0: never",
        ),
    },
    "ftp": _service_keys(
        10021,
        10990,
        passive_ports=Key(
            None,
            _optional(_port_range),
            'none (any free port) or "LOW-HIGH", 1024 to 65535',
            "ports PASV/EPSV listen on (open them in the firewall)",
        ),
        masquerade_address=Key(
            None,
            _optional(_ipv4),
            "none or an IPv4 address",
            "address PASV advertises (the public address behind NAT)",
        ),
        anonymous=Key(
            True, _bool, "true or false", "accept anonymous/ftp with any password (public/ read-only)"
        ),
        require_tls=Key(
            False, _bool, "true or false", "users must AUTH TLS and PROT P (anonymous exempt)"
        ),
        require_tls_session_reuse=Key(
            False,
            _bool,
            "true or false",
            "protected data connections must resume the control connection's TLS session",
        ),
        data_timeout=Key(
            30, _int_range(1, 3600), "seconds, 1 to 3600", "wait for a data connection this long"
        ),
    ),
    "dns": {
        "enabled": Key(True, _bool, "true or false", "start this service"),
        "listen_udp": Key(
            ["udp:10053:interface=127.0.0.1"],
            _udp_endpoints,
            "a list of udp:PORT:interface=ADDR strings",
            "UDP addresses, e.g. udp:53:interface=0.0.0.0",
        ),
        "listen_tcp": Key(
            ["tcp:10053:interface=127.0.0.1"],
            _stream_endpoints,
            "a list of endpoint strings (tcp:PORT:interface=ADDR, tcp6:, unix:, systemd:)",
            "TCP listeners (" + _LISTEN_DOC + ")",
        ),
        "trace": Key(False, _bool, "true or false", "log one line per query (client, name, type)"),
        "zones_dir": Key(
            "zones",
            _str,
            "a directory path (relative: under data_dir)",
            "BIND zone files named ORIGIN.zone or ORIGIN.db",
        ),
        "domain": Key(
            None,
            _optional(_hostname),
            "none or a DNS domain name",
            "appnet's own domain (automatic SOA/NS/MX/A); none: the hostname's parent",
        ),
        "mail_host_address": Key(
            "127.0.0.1", _ip, "an IPv4 or IPv6 address", "address of the mail host (the hostname) in the automatic zone"
        ),
        "records": Key(
            [], _rr_lines, "a list of zone-file lines", 'extra records of the automatic zone, e.g. "www 300 IN A 192.0.2.7"'
        ),
        "forwarders": Key(
            [],
            _dns_servers,
            'a list of "IP" or "IP:PORT" strings',
            "upstream servers for names outside our zones; empty: authoritative only",
        ),
        "forward_timeout": Key(2, _int_range(1, 30), "seconds, 1 to 30", "wait this long for each upstream"),
        "allow_recursion": Key(
            ["127.0.0.0/8", "::1/128"],
            _cidrs,
            "a list of networks (CIDR)",
            "clients that may use the forwarder; everyone else gets REFUSED",
        ),
        "allow_axfr": Key(
            ["127.0.0.0/8", "::1/128"],
            _cidrs,
            "a list of networks (CIDR)",
            "secondaries that may transfer our zones (AXFR)",
        ),
        "notify": Key(
            [],
            _dns_servers,
            'a list of "IP" or "IP:PORT" strings',
            "secondaries sent a NOTIFY when a zone's serial changes (RFC 1996)",
        ),
        "max_udp_payload": Key(
            1232, _int_range(512, 4096), "512 to 4096", "EDNS UDP payload size advertised and honoured"
        ),
        "cache_size": Key(10000, _int_range(0, 10_000_000), "0 to 10000000", "forwarded answers cached"),
        "reload_interval": Key(
            2, _int_range(0, 86400), "seconds, 0 to 86400", "check zone files for changes (0: SIGHUP only)"
        ),
        "tcp_idle_timeout": Key(
            10, _int_range(1, 3600), "seconds, 1 to 3600", "close idle TCP connections (RFC 7766)"
        ),
        "rate_limit": Key(
            1000,
            _int_range(0, 1_000_000),
            "0 to 1000000",
            "UDP queries per second answered per client address (0: no limit)",
        ),
        "rate_limit_exempt": Key(
            ["127.0.0.0/8", "::1/128"],
            _cidrs,
            "a list of networks (CIDR)",
            "clients never rate-limited",
        ),
        "max_connections": Key(1000, _int_range(1, 1_000_000), "1 to 1000000", "concurrent TCP connections"),
        "max_connections_per_address": Key(
            50, _int_range(1, 1_000_000), "1 to 1000000", "concurrent TCP connections per client address"
        ),
    },
}

#: Services in start-up order; each has a section in L{SCHEMA} and a package.
SERVICES = ("pop3", "tftp", "ftp", "dns", "smtp")


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
    if values["tftp"]["writable"] and not values["files"]["incoming"]:
        raise ConfigError(
            "tftp.writable", True, "needs [files] incoming = true (uploads go to the drop box)"
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
