"""
The C{appnet} console command: accounts, local delivery, and clients.

    appnet [--config FILE] [--data DIR] user add|passwd|del|list [NAME]
    appnet [--config FILE] [--data DIR] mail deliver USER < message.eml
    appnet pop3 fetch --host H --port P --user U [--tls starttls|implicit|none] [--delete] [--out DIR]

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

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")

    async def run(reactor: Any) -> None:
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
        for m in result.messages:
            path = os.path.join(args.out, f"{m.uid}.eml")
            with open(path, "wb") as f:
                f.write(m.data)
        print(f"{len(result.messages)} of {result.total} messages saved to {args.out}"
              + (f", {len(result.deleted)} deleted" if result.deleted else ""))

    from twisted.internet import defer

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the C{appnet} command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "user":
            return _user(args)
        if args.command == "mail":
            return _deliver(args)
        if args.command == "pop3":
            return _pop3_fetch(args)
    except ConfigError as e:
        raise SystemExit(f"appnet: {e}")
    except (AppnetError, ValueError) as e:
        raise SystemExit(f"appnet: {type(e).__name__}: {e}" if not str(e).startswith("bad") else f"appnet: {e}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
