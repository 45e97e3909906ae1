"""
C{appnet ftp ls|get|put}: the FTP client on the command line, with a
progress bar::

    appnet ftp ls  [--host H] [--port P] [--user U] [--tls explicit|implicit|none] [PATH]
    appnet ftp get [...] [--resume] REMOTE [LOCAL]
    appnet ftp put [...] [--resume] LOCAL [REMOTE]

The password comes from the terminal, or one line of standard input; user
C{anonymous} (the default) needs none.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from appnet.progress import progress_bar

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the C{ftp} command to the C{appnet} argument parser."""
    ftp = sub.add_parser("ftp", help="FTP client").add_subparsers(dest="action", required=True)
    for action, what in (("ls", "list a directory (MLSD)"), ("get", "download a file"),
                         ("put", "upload a file")):
        p = ftp.add_parser(action, help=what)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, help="default 10021, or 10990 with --tls implicit")
        p.add_argument("--user", default="anonymous")
        p.add_argument("--tls", choices=("explicit", "implicit", "none"), default="explicit")
        p.add_argument("--cafile", help="PEM file to trust (e.g. appnet-data/tls/cert.pem)")
        p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
        if action == "ls":
            p.add_argument("path", nargs="?", default="")
        elif action == "get":
            p.add_argument("--resume", action="store_true", help="continue a partial download")
            p.add_argument("remote")
            p.add_argument("local", nargs="?")
        else:
            p.add_argument("--resume", action="store_true", help="continue a partial upload")
            p.add_argument("local")
            p.add_argument("remote", nargs="?")


def _progress_bar() -> Callable[[int, "int | None"], None]:
    return progress_bar()


def run(args: argparse.Namespace, read_password: Callable[[str], str]) -> int:
    """Run C{appnet ftp ...}."""
    from twisted.internet import defer, task

    from appnet.ftp.client import FTPClientError, connect

    port = args.port or (10990 if args.tls == "implicit" else 10021)
    password = "anonymous@" if args.user in ("anonymous", "ftp") else read_password(
        f"password for {args.user}: ")

    async def main(reactor: Any) -> None:
        try:
            session = await connect(args.host, port, args.user, password, tls=args.tls,
                                    cafile=args.cafile, verify=not args.insecure,
                                    reactor=reactor)
            if args.action == "ls":
                for entry in await session.list(args.path):
                    size = "" if entry.size is None else str(entry.size)
                    when = (time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.modified))
                            if entry.modified is not None else "")
                    print(f"{entry.kind:<4} {size:>12} {when:<16} {entry.name}")
            elif args.action == "get":
                local = args.local or os.path.basename(args.remote) or "download"
                started = time.monotonic()
                n = await session.download(args.remote, local, resume=args.resume,
                                           progress=_progress_bar())
                seconds = max(time.monotonic() - started, 1e-6)
                sys.stderr.write("\n")
                print(f"{args.remote} -> {local}: {n} bytes in {seconds:.2f} s "
                      f"({n / seconds / 1e6:.1f} MB/s)")
            else:
                remote = args.remote or os.path.basename(args.local)
                started = time.monotonic()
                n = await session.upload(args.local, remote, resume=args.resume,
                                         progress=_progress_bar())
                seconds = max(time.monotonic() - started, 1e-6)
                sys.stderr.write("\n")
                print(f"{args.local} -> {remote}: {n} bytes in {seconds:.2f} s "
                      f"({n / seconds / 1e6:.1f} MB/s)")
            await session.quit()
        except (FTPClientError, OSError) as e:
            sys.stderr.write("\n")
            raise SystemExit(f"appnet: ftp {args.action}: {e}")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    return 0
