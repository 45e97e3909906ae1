"""
The C{appnet} console command: accounts, local delivery, and clients.

    appnet [--config FILE] [--data DIR] user add|passwd|del|list [NAME]
    appnet [--config FILE] [--data DIR] mail deliver USER < message.eml
    appnet mail send --from A --to B [--cc C] [--subject S] [--attach FILE] [--server H:P] < body.txt
    appnet pop3 fetch --host H --port P --user U [--tls starttls|implicit|none] [--delete] [--out DIR]
    appnet tftp get|put [--host H] [--port P] [--blksize N] [--windowsize N] FILE [NAME]
    appnet dns query NAME [TYPE] [--server IP] [--port P] [--tcp] [--norecurse] [--timeout S]
    appnet ftp ls|get|put [--host H] [--port P] [--user U] [--tls explicit|implicit|none] [--resume] ...

Passwords are prompted for on a terminal and read as one line from standard
input otherwise, so scripts can pipe them in.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any, Sequence

from appnet.config import ConfigError, load_config
from appnet.errors import AppnetError
from appnet.progress import progress_bar

__all__ = ["main"]


def _read_password(prompt: str, confirm: bool = False) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("again: ") != password:
            raise SystemExit("appnet: passwords do not match")
        return password
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appnet", description="appnet administration and clients")
    p.add_argument("--config", "-c", help="TOML configuration file")
    p.add_argument("--data", "-d", help="data directory (default ./appnet-data)")
    sub = p.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="manage accounts").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="create a user (password from the terminal or stdin)")
    add.add_argument("name")
    add.add_argument("--quota", help='byte quota, e.g. "500M"')
    user.add_parser("passwd", help="change a password").add_argument("name")
    user.add_parser("del", help="delete a user (their mail and files stay)").add_argument("name")
    user.add_parser("list", help="list users")

    mail = sub.add_parser("mail", help="mail tools").add_subparsers(dest="action", required=True)
    deliver = mail.add_parser("deliver", help="deliver a message from stdin (local delivery agent)")
    deliver.add_argument("user")
    deliver.add_argument("--folder", default="INBOX")
    from appnet.smtp.cli import add_parser as _add_mail_send_parser

    _add_mail_send_parser(mail)

    pop3 = sub.add_parser("pop3", help="POP3 client").add_subparsers(dest="action", required=True)
    fetch = pop3.add_parser("fetch", help="retrieve messages into a directory")
    fetch.add_argument("--host", default="127.0.0.1")
    fetch.add_argument("--port", type=int, default=10110)
    fetch.add_argument("--user", required=True)
    fetch.add_argument("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    fetch.add_argument("--cafile", help="PEM file to trust (e.g. appnet-data/tls/cert.pem)")
    fetch.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    fetch.add_argument("--delete", action="store_true", help="delete retrieved messages")
    fetch.add_argument("--out", default=".", help="directory for the .eml files")

    tftp = sub.add_parser("tftp", help="TFTP client").add_subparsers(dest="action", required=True)
    for action, what in (("get", "download a file"), ("put", "upload a file")):
        t = tftp.add_parser(action, help=what)
        t.add_argument("--host", default="127.0.0.1")
        t.add_argument("--port", type=int, default=10069)
        t.add_argument("--blksize", type=int, help="block size option, 8-65464 (e.g. 1468)")
        t.add_argument("--windowsize", type=int, help="window size option, 1-65535 (e.g. 16)")
        t.add_argument("--timeout", type=int, help="timeout option in seconds, 1-255")
        t.add_argument("--no-tsize", dest="tsize", action="store_false",
                       help="do not ask for / announce the file size")
        t.add_argument("--netascii", action="store_true", help="netascii mode (default octet)")
        if action == "get":
            t.add_argument("remote", help="file name on the server")
            t.add_argument("local", nargs="?", help="where to save it (default: its base name)")
        else:
            t.add_argument("local", help="file to send")
            t.add_argument("remote", nargs="?", help="name on the server (default: base name)")
    from appnet.ftp.cli import add_parser as _add_ftp_parser

    _add_ftp_parser(sub)
    dns_cmd = sub.add_parser("dns", help="DNS client").add_subparsers(dest="action", required=True)
    dns_query = dns_cmd.add_parser("query", help="ask a DNS server; print the answer like dig")
    dns_query.add_argument("name")
    dns_query.add_argument("type", nargs="?", default="A", help="record type (default A)")
    dns_query.add_argument("--server", default="127.0.0.1", help="server IP address")
    dns_query.add_argument("--port", type=int, default=10053)
    dns_query.add_argument("--tcp", action="store_true", help="ask over TCP")
    dns_query.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    dns_query.add_argument("--norecurse", action="store_true", help="clear RD")
    return p


def _user(args: argparse.Namespace) -> int:
    from appnet.accounts import AccountDatabase
    from appnet.config import SCHEMA

    config = load_config(args.config, args.data)
    db = AccountDatabase(config.path("users.json"), config["accounts"]["default_quota"])
    if args.action == "list":
        for name in db.names():
            quota = db.get(name).quota
            print(name if not quota else f"{name}\tquota={quota}")
        return 0
    if args.action == "add":
        quota = SCHEMA["accounts"]["default_quota"].check(args.quota) if args.quota else None
        os.makedirs(config.data_dir, exist_ok=True)
        db.add(args.name, _read_password(f"password for {args.name}: ", confirm=True), quota)
        print(f"user {args.name} added")
    elif args.action == "passwd":
        db.set_password(args.name, _read_password(f"new password for {args.name}: ", confirm=True))
        print(f"password of {args.name} changed")
    elif args.action == "del":
        db.remove(args.name)
        print(f"user {args.name} deleted")
    return 0


def _deliver(args: argparse.Namespace) -> int:
    from twisted.internet import defer

    from appnet.accounts import AccountDatabase
    from appnet.mailbox import MaildirStore

    config = load_config(args.config, args.data)
    db = AccountDatabase(config.path("users.json"), config["accounts"]["default_quota"])
    store = MaildirStore(
        config.path("mail"),
        quota_for=db.quota,
        user_exists=db.exists,
        hostname=config.hostname,
        run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
    )
    message = sys.stdin.buffer.read()
    if not message:
        raise SystemExit("appnet: empty message on standard input")
    d = store.deliver(args.user, message, folder=args.folder)
    result: list[Any] = []
    d.addBoth(result.append)
    outcome = result[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    print(f"delivered to {args.user} ({args.folder}, uid {outcome.uid})")
    return 0


def _pop3_fetch(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from appnet.pop3.client import fetch_mail

    password = _read_password(f"password for {args.user}@{args.host}: ")
    os.makedirs(args.out, exist_ok=True)

    progress = progress_bar("messages")

    async def run(reactor: Any) -> None:
        from OpenSSL import SSL
        from twisted.internet import defer, error

        try:
            result = await fetch_mail(
                args.host,
                args.port,
                args.user,
                password,
                tls=args.tls,
                cafile=args.cafile,
                verify=not args.insecure,
                delete=args.delete,
                progress=progress,
                reactor=reactor,
            )
        except (AppnetError, error.ConnectError, error.ConnectionLost, SSL.Error,
                defer.TimeoutError, OSError) as e:
            # task.react would print a traceback; one line says it all.
            raise SystemExit(f"appnet: pop3 fetch: {e}")
        if result.messages:
            sys.stderr.write("\n")  # end the progress bar's line
        for m in result.messages:
            path = os.path.join(args.out, f"{m.uid}.eml")
            with open(path, "wb") as f:
                f.write(m.data)
        print(f"{len(result.messages)} of {result.total} messages saved to {args.out}"
              + (f", {len(result.deleted)} deleted" if result.deleted else ""))

    from twisted.internet import defer

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    return 0


def _tftp_transfer(args: argparse.Namespace) -> int:

    from twisted.internet import defer, task

    from appnet.tftp import client
    from appnet.tftp.machine import RequestedOptions, TransferError

    netascii = args.netascii
    options = RequestedOptions(
        blksize=args.blksize,
        windowsize=args.windowsize,
        timeout=args.timeout,
        tsize=args.tsize and not (netascii and args.action == "put"),
    )
    mode = "netascii" if netascii else "octet"
    progress = progress_bar()

    async def run(reactor: Any) -> None:
        if args.action == "get":
            local = args.local or os.path.basename(args.remote.replace("\\", "/")) or "download"
            d = client.get(args.host, args.port, args.remote, local, mode=mode,
                           options=options, progress=progress, reactor=reactor)
            where = f"{args.remote} -> {local}"
        else:
            remote = args.remote or os.path.basename(args.local)
            d = client.put(args.host, args.port, remote, args.local, mode=mode,
                           options=options, progress=progress, reactor=reactor)
            where = f"{args.local} -> {remote}"
        try:
            result = await d
        except TransferError as e:
            sys.stderr.write("\n")
            raise SystemExit(f"appnet: tftp {args.action} {where}: {e}")
        stats = result.stats
        seconds = max(stats.duration, 1e-6)
        sys.stderr.write("\n")
        print(f"{where}: {stats.file_bytes} bytes in {seconds:.2f} s "
              f"({stats.file_bytes / seconds / 1e6:.1f} MB/s, blksize {stats.options.blksize}, "
              f"windowsize {stats.options.windowsize})")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    return 0


def _dns_query(args: argparse.Namespace) -> int:
    """Print the answer section as dig does; exit 1 on an error RCODE."""
    import dns.flags
    import dns.rcode
    from twisted.internet import task

    from appnet.dns.client import DNSClient, DNSError, records_of

    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        client = DNSClient([(args.server, args.port)], timeout=args.timeout, tcp=args.tcp, reactor=reactor)
        try:
            outcome["reply"] = await client.query(
                args.name, args.type.upper(), recursion_desired=not args.norecurse
            )
        except DNSError as e:
            outcome["error"] = e

    from twisted.internet import defer

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    if "error" in outcome:
        raise SystemExit(f"appnet: {outcome['error']}")
    reply = outcome["reply"]
    rcode = reply.rcode()
    print(f";; status: {dns.rcode.to_text(rcode)}, flags: {dns.flags.to_text(reply.flags).lower()}")
    for record in records_of(reply):
        print(record.to_text())
    return 0 if rcode == dns.rcode.NOERROR else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the C{appnet} command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "user":
            return _user(args)
        if args.command == "mail" and args.action == "send":
            from appnet.smtp.cli import run as _mail_send

            return _mail_send(args)
        if args.command == "mail":
            return _deliver(args)
        if args.command == "pop3":
            return _pop3_fetch(args)
        if args.command == "dns":
            return _dns_query(args)
        if args.command == "tftp":
            return _tftp_transfer(args)
        if args.command == "ftp":
            from appnet.ftp.cli import run as _ftp_run

            return _ftp_run(args, _read_password)
    except ConfigError as e:
        raise SystemExit(f"appnet: {e}")
    except (AppnetError, ValueError) as e:
        raise SystemExit(f"appnet: {type(e).__name__}: {e}" if not str(e).startswith("bad") else f"appnet: {e}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
