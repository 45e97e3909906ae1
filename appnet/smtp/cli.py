"""
C{appnet mail send}: compose a message and send it by SMTP::

    echo "See you at 5." | appnet mail send --from alice@example.org --to bob@example.org \\
        --subject "Meeting" --attach agenda.pdf --user alice

The body is standard input (UTF-8). The default server is appnet's own
submission port, C{127.0.0.1:10587}, with STARTTLS (C{127.0.0.1:10465} with
C{--tls implicit}). The password comes from C{APPNET_PASSWORD}, the
terminal, or the first line of standard input (the body follows it). On a
loopback server the certificate is checked against appnet's own
(C{tls.cert}, or the self-signed one in C{<data_dir>/tls/}) unless
C{--cafile} or C{--insecure} says otherwise. Prints one line per recipient;
exits 1 if any recipient was refused or the session failed.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from email.message import EmailMessage
from typing import Any, BinaryIO

__all__ = ["add_parser", "build_message", "run", "server_address"]


def add_parser(mail: Any) -> None:
    """Add C{send} to the C{appnet mail} sub-command parser."""
    send = mail.add_parser("send", help="compose a message (body from stdin) and send it by SMTP")
    send.add_argument("--from", dest="sender", required=True, help="the From and envelope sender")
    send.add_argument("--to", action="append", required=True, help="a recipient (repeatable)")
    send.add_argument("--cc", action="append", default=[], help="a copy recipient (repeatable)")
    send.add_argument("--bcc", action="append", default=[],
                      help="a blind copy recipient: envelope only (repeatable)")
    send.add_argument("--subject", default="")
    send.add_argument("--attach", action="append", default=[], metavar="FILE",
                      help="attach a file (repeatable)")
    send.add_argument("--html", metavar="FILE", help="an HTML alternative of the body (UTF-8)")
    send.add_argument("--server", help="host:port (default 127.0.0.1:10587; :10465 with --tls implicit)")
    send.add_argument("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    send.add_argument("--user", help="log in as this user (AUTH)")
    send.add_argument("--cafile", help="PEM file to trust (default on loopback: appnet's certificate)")
    send.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    send.add_argument("--timeout", type=float, default=60, help="seconds to wait for each reply")


def server_address(text: str | None, tls: str) -> tuple[str, int]:
    """
    C{host:port}, C{[v6]:port} or C{host} (the port then 10587, or 10465
    for implicit TLS) as C{(host, port)}.

    @raise ValueError: the port is not a number from 1 to 65535
    """
    default_port = 10465 if tls == "implicit" else 10587
    if not text:
        return "127.0.0.1", default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad --server {text!r}: want host:port")
    return host, int(port_text)


def build_message(args: argparse.Namespace, body: str) -> tuple[list[str], EmailMessage]:
    """The envelope recipients (to, cc, bcc) and the composed message."""
    from appnet import mime

    html = None
    if args.html:
        with open(args.html, encoding="utf-8") as f:
            html = f.read()
    msg = mime.compose(args.sender, args.to, args.subject, body, html=html, cc=args.cc,
                       attachments=[mime.attachment_from_path(p) for p in args.attach])
    return [*args.to, *args.cc, *args.bcc], msg


def _password(args: argparse.Namespace, stdin: BinaryIO) -> str | None:
    if args.user is None:
        return None
    if "APPNET_PASSWORD" in os.environ:
        return os.environ["APPNET_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    return stdin.readline().decode("utf-8").rstrip("\r\n")


def _trust(args: argparse.Namespace, host: str) -> str | None:
    """The PEM file to trust: --cafile, or appnet's own certificate for a loopback server."""
    if args.cafile or args.insecure:
        return args.cafile
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    from appnet.config import load_config

    config = load_config(args.config, args.data)
    cert = config["tls"]["cert"] or config.path(os.path.join("tls", "cert.pem"))
    return cert if os.path.exists(cert) else None


def run(args: argparse.Namespace) -> int:
    """Run C{appnet mail send}."""
    from twisted.internet import defer, task

    from appnet.smtp.client import SMTPClientError, send_mail

    host, port = server_address(args.server, args.tls)
    stdin = sys.stdin.buffer
    password = _password(args, stdin)
    try:
        body = stdin.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"appnet: mail send: the body on standard input is not UTF-8 ({e})")
    try:
        recipients, msg = build_message(args, body)
        trust = _trust(args, host)
    except OSError as e:
        raise SystemExit(f"appnet: mail send: {e}")

    async def main(reactor: Any) -> None:
        try:
            result = await send_mail(host, port, args.sender, recipients, msg, tls=args.tls,
                                     verify=not args.insecure, trust_root=trust,
                                     username=args.user, password=password,
                                     timeout=args.timeout, reactor=reactor)
        except SMTPClientError as e:
            raise SystemExit(f"appnet: mail send: {e.stage}: {e}")
        except (ValueError, OSError) as e:  # a bad address; an unreadable --cafile
            raise SystemExit(f"appnet: mail send: {e}")
        for rcpt, (code, text) in result.accepted.items():
            print(f"{rcpt}: accepted ({code} {text})")
        for rcpt, (code, text) in result.refused.items():
            print(f"{rcpt}: refused ({code} {text})")
        if result.code is not None:
            print(f"message: {result.code} {result.text}")
        if result.refused:
            raise SystemExit(1)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    return 0
