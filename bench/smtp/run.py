"""
The SMTP benchmark: appnet against aiosmtpd, Twisted's stock mail service
and Postfix's C{smtp-sink}, all loaded by Postfix's C{smtp-source}.

One command (as root, so smtp-sink can drop to C{nobody})::

    python bench/smtp/run.py [--messages 5000] [--sessions 10] [--size 2000] [--rounds 3]

Each server is started here on a free port on 127.0.0.1:

 - appnet: C{twistd appnet-smtp} with a throw-away data directory and user
   C{alice}; every accepted message is durable before the 250 (its record
   in the mailbox journal flushed; see docs/smtp.md, Durability) and in
   C{alice}'s Maildir just after;
 - appnet-fsync: the same with C{[mail] journal = false}: each message
   written to C{tmp/} and fsynced, renamed, C{new/} fsynced (per batch);
 - aiosmtpd: C{aiosmtpd_server.py}, each message written to its own file
   (no fsync);
 - Twisted stock: C{twisted_stock.tac}, C{twisted.mail}'s Maildir domain
   (tmp/ then rename into new/, no fsync), with the Python 3 patches the
   .tac lists;
 - smtp-sink -d: Postfix's test server writing each message to a file;
 - smtp-sink: the same, discarding (the ceiling of this client on this box).

Every round runs C{smtp-source -d -s SESSIONS -m MESSAGES -l SIZE} (C{-d}:
sessions are reused for the next message) against each server in turn,
the order rotating, each after a C{sync} (so no server pays for flushing
another's unsynced files); messages per second is MESSAGES over the
client's wall time. After each run the messages on disk are counted (every server but the
discarding sink must hold exactly MESSAGES) and their directory is moved aside and
replaced by an empty one; nothing is deleted until the end. (Deleting 5,000 files made
the next run's file creations slow for every server: ext4 skips inodes freed in the
last seconds when it allocates, and scanning past thousands of them took more kernel
time per message than the rest of the server's work.) It prints the best
and median rate per server and the ratios of appnet to each peer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

from _common import HOST, free_port, loadavg, wait_for_greeting  # noqa: E402

USER, PASSWORD = "alice", "bench-password"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Server:
    """One server under test: how to start it and where its messages land."""

    name = ""

    def __init__(self, work: str) -> None:
        self.work = os.path.join(work, self.name)
        os.makedirs(self.work)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def spool(self) -> str | None:
        """The directory each accepted message is a file in (None: discarded)."""
        raise NotImplementedError

    def start(self) -> None:
        argv, env = self.command()
        self.log = open(os.path.join(self.work, "server.log"), "wb")
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=self.log,
            stderr=subprocess.STDOUT, cwd=self.work, start_new_session=True,
        )
        wait_for_greeting(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.log.close()

    def collect(self, expected: int) -> int | None:
        """
        Count the messages that arrived and move them aside (see the
        docstring). appnet writes a file just after its 250 (the journal
        made it durable first): wait up to 10 s for C{expected} files.
        """
        spool = self.spool()
        if spool is None:
            return None
        deadline = time.monotonic() + 10
        while True:
            names = [n for n in os.listdir(spool) if not n.startswith(".")]
            if len(names) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        st = os.stat(spool)
        self.collected = getattr(self, "collected", 0) + 1
        os.rename(spool, os.path.join(self.work, f"collected-{self.collected}"))
        os.mkdir(spool)
        os.chmod(spool, st.st_mode & 0o7777)
        os.chown(spool, st.st_uid, st.st_gid)
        return len(names)


class Appnet(Server):
    name = "appnet"
    journal = True

    def command(self):
        data = os.path.join(self.work, "data")
        config = os.path.join(self.work, "appnet.toml")
        with open(config, "w") as f:
            f.write(
                "[smtp]\n"
                f'listen = ["tcp:{self.port}:interface={HOST}"]\n'
                "listen_tls = []\n"
                "submission_listen = []\n"
                f"[mail]\njournal = {'true' if self.journal else 'false'}\n"
            )
        subprocess.run(
            [sys.executable, "-m", "appnet.cli", "--data", data, "user", "add", USER],
            input=PASSWORD.encode(), check=True, cwd=REPO, capture_output=True,
        )
        argv = TWISTD + ["-n", "--pidfile=", "appnet-smtp", "--config", config, "--data", data]
        return argv, {"PYTHONPATH": REPO}

    def spool(self):
        return os.path.join(self.work, "data", "mail", USER, "new")


class AppnetFsync(Appnet):
    """appnet without the mailbox journal: file and directory fsynced per batch."""

    name = "appnet-fsync"
    journal = False


class Aiosmtpd(Server):
    name = "aiosmtpd"

    def command(self):
        os.makedirs(self.spool())
        return [sys.executable, os.path.join(HERE, "aiosmtpd_server.py"),
                str(self.port), self.spool()], {}

    def spool(self):
        return os.path.join(self.work, "spool")


class TwistedStock(Server):
    name = "twisted-stock"

    def command(self):
        return TWISTD + ["-n", "--pidfile=", "-y", os.path.join(HERE, "twisted_stock.tac")], {
            "BENCH_MAILDIR": os.path.join(self.work, "maildir"),
            "BENCH_PORT": str(self.port),
        }

    def spool(self):
        return os.path.join(self.work, "maildir", USER, "new")


class SmtpSinkDump(Server):
    name = "smtp-sink -d"

    def command(self):
        os.makedirs(self.spool())
        os.chmod(self.spool(), 0o777)
        # -d TEMPLATE: one file per message, named by strftime + random hex.
        return ["smtp-sink", "-u", "nobody", "-d", os.path.join(self.spool(), "%H%M%S."),
                f"{HOST}:{self.port}", "256"], {}

    def spool(self):
        return os.path.join(self.work, "spool")


class SmtpSink(Server):
    name = "smtp-sink"

    def command(self):
        return ["smtp-sink", "-u", "nobody", f"{HOST}:{self.port}", "256"], {}

    def spool(self):
        return None


SERVERS = (Appnet, AppnetFsync, Aiosmtpd, TwistedStock, SmtpSinkDump, SmtpSink)


def run_source(server: Server, messages: int, sessions: int, size: int) -> float:
    """
    One smtp-source run against C{server}; messages per second.

    C{sync} first: the peers write without fsync, and on ext4 the next
    fsync (appnet's) would otherwise pay for flushing their files too.
    """
    os.sync()
    argv = ["smtp-source", "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", "bench.localhost", "-f", "bench@localhost", "-t", f"{USER}@localhost",
            f"{HOST}:{server.port}"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source against {server.name}: {done.stderr.decode().strip()}")
    return messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2000, help="message size (octets)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt install postfix")

    work = tempfile.mkdtemp(prefix="appnet-bench-smtp-")
    os.chmod(work, 0o755)  # smtp-sink runs as nobody and writes below it
    servers = [cls(work) for cls in SERVERS]
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    print(f"load average at start: {loadavg():.2f}")
    try:
        for s in servers:
            s.start()
        for s in servers:  # warm-up, not counted
            run_source(s, min(500, args.messages), args.sessions, args.size)
            s.collect(min(500, args.messages))
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                rate = run_source(s, args.messages, args.sessions, args.size)
                arrived = s.collect(args.messages)
                if arrived is not None and arrived != args.messages:
                    raise RuntimeError(f"{s.name}: {arrived} of {args.messages} messages on disk")
                rates[s.name].append(rate)
                print(f"round {r + 1}: {s.name:14} {rate:8.0f} msgs/s", flush=True)
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)
    print(f"load average at end: {loadavg():.2f}")

    print(f"\n{args.messages} messages of {args.size} octets, {args.sessions} sessions, "
          f"{args.rounds} rounds (smtp-source -d)\n")
    print("| server | best msgs/s | median msgs/s | rounds | appnet / server (median) |")
    print("|---|---:|---:|---|---:|")
    appnet_median = statistics.median(rates["appnet"])
    for s in servers:
        values = rates[s.name]
        median = statistics.median(values)
        rounds = " / ".join(f"{v:,.0f}" for v in values)
        print(f"| {s.name} | {max(values):,.0f} | {median:,.0f} | {rounds} | "
              f"{appnet_median / median:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
