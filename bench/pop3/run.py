"""
The POP3 benchmark: appnet against Dovecot and Twisted's stock POP3 server.

One command::

    python bench/pop3/run.py [--messages 2000] [--size 4096] [--reps 9]

writes C{--messages} messages of C{--size} octets for one user into a
Maildir, gives each server its own identical copy, starts the three servers
on 127.0.0.1 (appnet as C{twistd appnet-pop3}, Dovecot with a throw-away
config, Twisted's stock server from C{twisted_stock.tac}), and times the
same session against each: login, RETR of every message, QUIT, no DELE (so
the maildrop is the same for every session). One warm-up session per server
is not counted; then C{--reps} rounds with the pipelined client,
C{--poplib-reps} with poplib and C{--login-reps} of login + QUIT alone, the
server order rotating each round. It prints, per server and client, the
best and median messages per second (whole session and RETR phase), each
server's CPU per login and per RETR, and the ratios appnet/Dovecot and
appnet/Twisted-stock.

The measuring client is the pipelined raw-socket client of C{client.py};
Python's C{poplib} runs too, for reference (the issue's figures were taken
with it). Server CPU time per message is read from C{/proc} (every process
of the server's process group, and the children it reaped), so it stays
meaningful whatever the client's speed.

Everything is bounded: a fixed number of sessions, each with a deadline,
and every wait for a server has one too. Only 127.0.0.1 is used. See
bench/pop3/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import corpus  # noqa: E402
import dovecot  # noqa: E402
from client import BenchError, SessionResult, pipelined_session, poplib_session  # noqa: E402

HOST = "127.0.0.1"
USER = "alice"
PASSWORD = "bench-pw"
SERVERS = ("appnet", "dovecot", "twisted-stock")
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average (other work on the machine skews timings)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_stall_total() -> float | None:
    """
    Seconds for which some runnable task waited for a CPU, since boot
    (Linux pressure stall information), or None where unavailable.
    """
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
    except OSError:
        return None
    return int(some[-1].split("=")[1]) / 1e6


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def group_cpu(pgid: int) -> float:
    """
    CPU seconds used so far by process group C{pgid}: every live (or
    unreaped) member, plus the children its leader has reaped.
    """
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) != pgid:
            continue
        total += int(fields[11]) + int(fields[12])
        if int(entry) == pgid:
            total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


@dataclass
class Server:
    """One server under test, started as its own process group."""

    name: str
    port: int
    command: list[str]
    env: dict[str, str]
    cwd: str
    log: str
    cpu_set: set[int] | None = None
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait (bounded) until it greets on its port."""
        log = open(self.log, "ab")
        preexec: Callable[[], None] | None = None
        if self.cpu_set:
            cpus = self.cpu_set

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as s:
                    if s.recv(512).startswith(b"+OK"):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} did not greet on port {self.port} within {timeout} s:\n{self.tail()}")

    def cpu(self) -> float:
        """CPU seconds the server's processes have used so far."""
        assert self.process is not None
        return group_cpu(self.process.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM its process group; SIGKILL what is left after C{timeout}."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Measured:
    """One session and what the server spent on it."""

    server: str
    client: str
    rep: int
    result: SessionResult
    server_cpu: float
    verified: bool
    stall: float | None = None

    def row(self) -> dict:
        d = asdict(self.result)
        d.update(
            server=self.server,
            rep=self.rep,
            rate=self.result.rate,
            retr_rate=self.result.retr_rate,
            server_cpu=self.server_cpu,
            verified=self.verified,
            stall=self.stall,
        )
        return d


@dataclass
class Summary:
    server: str
    client: str
    runs: list[Measured] = field(default_factory=list)

    def _median(self, f: Callable[[Measured], float]) -> float:
        return statistics.median(f(m) for m in self.runs)

    @property
    def best(self) -> float:
        return max(m.result.rate for m in self.runs)

    @property
    def median(self) -> float:
        return self._median(lambda m: m.result.rate)

    @property
    def median_retr(self) -> float:
        return self._median(lambda m: m.result.retr_rate)

    @property
    def login_ms(self) -> float:
        return self._median(lambda m: m.result.login * 1000)

    @property
    def server_us_per_msg(self) -> float:
        return self._median(lambda m: m.server_cpu / max(m.result.messages, 1) * 1e6)

    @property
    def client_ceiling(self) -> float:
        """Messages per client CPU second: the client's own limit."""
        return self._median(lambda m: m.result.messages / max(m.result.client_cpu, 1e-9))

    @property
    def stall(self) -> float | None:
        """Median share of session time some task waited for a CPU."""
        values = [m.stall for m in self.runs if m.stall is not None]
        return statistics.median(values) if values else None

    @property
    def verified(self) -> bool:
        return all(m.verified for m in self.runs)


# -- setting the servers up ---------------------------------------------------


#: Creates the user with a cheap scrypt (N=2**4), as appnet.testing's
#: fast_hashes does: a login then costs what Dovecot's {PLAIN} one does.
_FAST_USER = (
    "import sys, appnet.accounts as a; a.SCRYPT_N = 1 << 4; "
    "a.AccountDatabase(sys.argv[1]).add(sys.argv[2], sys.stdin.readline().rstrip('\\n'))"
)


def prepare_appnet(
    work: str,
    source_root: str,
    port: int,
    python: str,
    env: dict,
    profile: str | None,
    fast_hash: bool = False,
    auth_cache: int | None = None,
) -> Server:
    data = os.path.join(work, "appnet")
    os.makedirs(data)
    config_args: list[str] = []
    if auth_cache is not None:
        config = os.path.join(work, "appnet.toml")
        with open(config, "w") as f:
            f.write(f"[accounts]\nauth_cache_ttl = {auth_cache}\n")
        config_args = ["--config", config]
    if fast_hash:
        command = [python, "-c", _FAST_USER, os.path.join(data, "users.json"), USER]
    else:
        # As an administrator does it: appnet's default scrypt cost.
        command = [python, "-m", "appnet.cli", "--data", data, "user", "add", USER]
    subprocess.run(
        command,
        input=PASSWORD + "\n",
        text=True,
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
        timeout=60,
    )
    corpus.copy_maildir(source_root, os.path.join(data, "mail"), USER)
    log = os.path.join(work, "appnet.log")
    twistd = [python, *TWISTD, "-n", "--pidfile=", f"--logfile={log}"]
    if profile == "cprofile":
        twistd += [f"--profile={work}/appnet.cprofile", "--profiler=cprofile", "--savestats"]
    command = twistd + [
        "appnet-pop3",
        *config_args,
        "--data",
        data,
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--listen-tls",
        "none",
    ]
    return Server("appnet", port, command, env, work, log + ".out")


def prepare_dovecot(work: str, source_root: str, port: int) -> Server:
    directory = os.path.join(work, "dovecot")
    os.makedirs(directory)
    # Dovecot's mail and login processes run as other users (when we are
    # root): they must be able to traverse the work directory.
    os.chmod(work, 0o711)
    mail_root = os.path.join(directory, "mail")
    corpus.copy_maildir(source_root, mail_root, USER)
    config = dovecot.write_config(directory, mail_root, port, USER, PASSWORD)
    return Server(
        "dovecot", port, dovecot.dovecot_command(config), dict(os.environ), directory, os.path.join(directory, "dovecot.out")
    )


def prepare_stock(work: str, source_root: str, port: int, python: str, nodelay: bool = True) -> Server:
    name = "twisted-stock" if nodelay else "twisted-stock-nagle"
    directory = os.path.join(work, name)
    os.makedirs(directory)
    mail_root = os.path.join(directory, "mail")
    corpus.copy_maildir(source_root, mail_root, USER)
    env = dict(os.environ)
    env.update(
        BENCH_MAILDIR_ROOT=mail_root,
        BENCH_PORT=str(port),
        BENCH_USER=USER,
        BENCH_PASSWORD=PASSWORD,
        BENCH_NODELAY="1" if nodelay else "0",
    )
    log = os.path.join(directory, "twistd.log")
    command = [python, *TWISTD, "-n", "--pidfile=", f"--logfile={log}", "-y", os.path.join(HERE, "twisted_stock.tac")]
    return Server(name, port, command, env, directory, log + ".out")


# -- measuring ---------------------------------------------------------------


def measure(server: Server, client: str, rep: int, count: int, window: int, timeout: float, expected: int) -> Measured:
    cpu0 = server.cpu()
    stall0 = cpu_stall_total()
    if client == "poplib":
        result = poplib_session(HOST, server.port, USER, PASSWORD, count, timeout=timeout)
    else:
        result = pipelined_session(HOST, server.port, USER, PASSWORD, count, window=window, timeout=timeout)
    # Dovecot's pop3 process may still be exiting: give it a moment to be
    # reaped so its CPU time lands in the master's (bounded wait).
    time.sleep(0.05)
    cpu = server.cpu() - cpu0
    stall1 = cpu_stall_total()
    # Share of the session's time during which some task (ours or another
    # program's) was kept from a CPU: high values mean a disturbed session.
    stall = None if stall0 is None or stall1 is None else (stall1 - stall0) / (result.wall + 0.05)
    verified = result.errors == 0 and result.messages == count and result.body_octets == expected
    return Measured(server.name, result.client, rep, result, cpu, verified, stall)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def server_cpu_split(summaries: dict[tuple[str, str], Summary], server: str, client: str, count: int) -> tuple[float, float] | None:
    """
    (median CPU ms of a login-only session, CPU µs per RETR) from the
    medians of the login-only and the full sessions.
    """
    login = summaries.get((server, "login-only"))
    full = summaries.get((server, client))
    if not login or not full:
        return None
    login_cpu = statistics.median(m.server_cpu for m in login.runs)
    full_cpu = statistics.median(m.server_cpu for m in full.runs)
    return login_cpu * 1000, max(full_cpu - login_cpu, 0.0) / count * 1e6


def print_table(summaries: list[Summary], out=sys.stdout) -> None:
    header = (
        f"{'server':<20} {'client':<13} {'best':>8} {'median':>8} {'RETR phase':>10} "
        f"{'login ms':>8} {'client ceiling':>14} {'CPU stall':>9}  ok"
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    for s in summaries:
        print(
            f"{s.server:<20} {s.client:<13} {fmt_rate(s.best):>8} {fmt_rate(s.median):>8} "
            f"{fmt_rate(s.median_retr):>10} {s.login_ms:>8.1f} "
            f"{fmt_rate(s.client_ceiling):>14} {'-' if s.stall is None else format(s.stall, '.0%'):>9}  {'yes' if s.verified else 'NO'}",
            file=out,
        )


def markdown(
    summaries: list[Summary],
    cpu: list[tuple[str, float, float]],
    ratios: list[tuple[str, float, float, float | None]],
) -> str:
    lines = [
        "| server | client | best msgs/s | median msgs/s | median msgs/s, RETR phase | login (ms) | client ceiling (msgs/s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.server} | {s.client} | {fmt_rate(s.best)} | {fmt_rate(s.median)} | {fmt_rate(s.median_retr)} "
            f"| {s.login_ms:.1f} | {fmt_rate(s.client_ceiling)} |"
        )
    if cpu:
        lines += ["", "| server | CPU of a login + QUIT session (ms) | CPU per RETR (µs) |", "|---|---:|---:|"]
        for server, login_ms, per_retr in cpu:
            lines.append(f"| {server} | {login_ms:.0f} | {per_retr:.0f} |")
    lines += ["", "| ratio of medians | whole session | RETR phase | target |", "|---|---:|---:|---:|"]
    for label, whole, retr, target in ratios:
        lines.append(f"| {label} | {whole:.2f}× | {retr:.2f}× | {'≥ %.1f×' % target if target else '—'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000, help="messages in the maildrop (default 2000)")
    p.add_argument("--size", type=int, default=4096, help="octets per message as stored (default 4096)")
    p.add_argument("--reps", type=int, default=9, help="pipelined sessions per server (default 9)")
    p.add_argument("--poplib-reps", type=int, default=3, help="poplib sessions per server (default 3; 0: none)")
    p.add_argument("--login-reps", type=int, default=5, help="login + QUIT sessions per server, for the CPU split (default 5; 0: none)")
    p.add_argument("--window", type=int, default=64, help="RETRs in flight for the pipelined client (default 64)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    p.add_argument(
        "--appnet-hash",
        choices=["default", "fast"],
        default="default",
        help="appnet's password hash: its default scrypt cost (as 'appnet user add' stores it), or a cheap one like Dovecot's {PLAIN}",
    )
    p.add_argument(
        "--appnet-auth-cache",
        type=int,
        metavar="SECONDS",
        help="set appnet's [accounts] auth_cache_ttl (0: every login checks the scrypt hash); default: appnet's own",
    )
    p.add_argument(
        "--stock-nagle",
        type=int,
        default=0,
        metavar="N",
        help="also run the stock server without TCP_NODELAY: one poplib and one pipelined session over the first N messages (slow: ~25 msgs/s with poplib)",
    )
    p.add_argument("--pin", action="store_true", help="pin this client to the first CPU and every server to the second")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of one session, seconds (default 300)")
    p.add_argument("--profile", choices=["cprofile"], help="run appnet under twistd's cProfile (slows it: numbers not comparable)")
    p.add_argument("--json", help="write every session's numbers here")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for docs/performance.md)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (maildirs, configs, logs)")
    p.add_argument("--workdir", help="parent of the work directory (default: the system temp dir)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        p.error(f"--servers: unknown {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if args.messages < 1 or args.reps < 1 or args.window < 1:
        p.error("--messages, --reps and --window must be at least 1")
    if args.poplib_reps < 0 or args.login_reps < 0:
        p.error("--poplib-reps and --login-reps must not be negative")
    if "dovecot" in names and not os.access(dovecot.DOVECOT, os.X_OK):
        p.error(f"no Dovecot at {dovecot.DOVECOT}: apt-get install dovecot-core dovecot-pop3d, or --servers appnet,twisted-stock")
    if args.stock_nagle > args.messages or args.stock_nagle < 0:
        p.error("--stock-nagle N must be between 0 and --messages")

    python = sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    client_cpus = server_cpus = None
    if args.pin:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            p.error("--pin needs two CPUs")
        client_cpus, server_cpus = {available[0]}, {available[1]}
        os.sched_setaffinity(0, client_cpus)

    load_before = loadavg()
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f} before starting: other work will skew the timings")
    work = tempfile.mkdtemp(prefix="appnet-bench-pop3-", dir=args.workdir)
    try:
        ok = _run(args, names, work, python, env, server_cpus, client_cpus, load_before, argv)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _run(
    args: argparse.Namespace,
    names: list[str],
    work: str,
    python: str,
    env: dict[str, str],
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
    load_before: float,
    argv: list[str] | None,
) -> bool:
    """Set up, measure and report; True if every session was verified."""
    source = os.path.join(work, "corpus")
    t0 = time.monotonic()
    written = corpus.write_maildir(source, USER, args.messages, args.size)
    expected = written.expected_body_octets
    print(
        f"corpus: {args.messages} messages x {args.size} octets "
        f"({statistics.mean(written.crlf_sizes):,.0f} with CRLF) in {time.monotonic() - t0:.1f} s; work dir {work}"
    )

    servers: list[Server] = []
    summaries: dict[tuple[str, str], Summary] = {}

    def record(m: Measured, quiet: bool = False) -> None:
        summaries.setdefault((m.server, m.client), Summary(m.server, m.client)).runs.append(m)
        if quiet:
            return
        print(
            f"  rep {m.rep} {m.server:<20} {m.client:<13} {fmt_rate(m.result.rate):>7} msgs/s "
            f"(RETR phase {fmt_rate(m.result.retr_rate)}; login {m.result.login * 1000:.1f} ms; "
            f"server CPU {m.server_cpu:.2f} s; client CPU {m.result.client_cpu:.2f} s"
            + (f"; CPU stall {m.stall:.0%}" if m.stall is not None else "")
            + ")"
            + ("" if m.verified else "  NOT VERIFIED")
        )

    def rounds(client: str, reps: int, count: int, expect: int) -> None:
        for rep in range(1, reps + 1):
            k = rep % len(servers)
            for s in servers[k:] + servers[:k]:
                m = measure(s, client, rep, count, args.window, args.timeout, expect)
                if client == "login-only":
                    m.client = client
                record(m, quiet=client == "login-only")

    try:
        for name in names:
            port = free_port()
            if name == "appnet":
                s = prepare_appnet(
                    work, source, port, python, env, args.profile, args.appnet_hash == "fast", args.appnet_auth_cache
                )
            elif name == "dovecot":
                s = prepare_dovecot(work, source, port)
            else:
                s = prepare_stock(work, source, port, python)
            s.cpu_set = server_cpus
            s.start()
            servers.append(s)
            print(f"started {name} on {HOST}:{port} (pid {s.process.pid})")

        print("warm-up: one pipelined session per server (not counted)")
        for s in servers:
            m = measure(s, "pipelined", 0, args.messages, args.window, args.timeout, expected)
            print(f"  {s.name:<14} {fmt_rate(m.result.rate):>7} msgs/s  verified={m.verified}")

        rounds("pipelined", args.reps, args.messages, expected)
        rounds("poplib", args.poplib_reps, args.messages, expected)
        if args.login_reps:
            print(f"  ({args.login_reps} login + QUIT sessions per server, for the CPU split)")
            rounds("login-only", args.login_reps, 0, 0)

        if args.stock_nagle:
            s = prepare_stock(work, source, free_port(), python, nodelay=False)
            s.cpu_set = server_cpus
            s.start()
            servers.append(s)
            n = args.stock_nagle
            part = corpus.Corpus(n, args.size, written.crlf_sizes[:n]).expected_body_octets
            for client in ("poplib", "pipelined"):
                record(measure(s, client, 1, n, args.window, args.timeout, part))
    finally:
        for s in servers:
            s.stop()

    def order(s: Summary) -> tuple:
        return (s.client == "poplib", s.server not in SERVERS, s.client, SERVERS.index(s.server) if s.server in SERVERS else 9)

    ordered = sorted((s for s in summaries.values() if s.client != "login-only"), key=order)
    pipelined = f"pipelined/{args.window}"
    print()
    print(
        f"POP3: login + RETR {args.messages} x {args.size} octets + QUIT on {HOST}; medians of "
        f"{args.reps} pipelined (window {args.window}) and {args.poplib_reps} poplib sessions per server; msgs/s"
        + ("; appnet user with a cheap hash" if args.appnet_hash == "fast" else "")
        + (f"; appnet auth_cache_ttl = {args.appnet_auth_cache}" if args.appnet_auth_cache is not None else "")
    )
    print_table(ordered)

    cpu = []
    for name in names:
        split = server_cpu_split(summaries, name, pipelined, args.messages)
        if split:
            cpu.append((name, *split))
    if cpu:
        print()
        print(f"{'server CPU':<20} {'login+QUIT session ms':>22} {'per RETR us':>12}")
        for name, login_ms, per_retr in cpu:
            print(f"{name:<20} {login_ms:>22.0f} {per_retr:>12.1f}")

    ratios: list[tuple[str, float, float, float | None]] = []
    for client in (pipelined, "poplib"):
        a = summaries.get(("appnet", client))
        for peer, target in (("dovecot", 0.8), ("twisted-stock", 2.0)):
            b = summaries.get((peer, client))
            if a and b:
                ratios.append(
                    (f"appnet / {peer}, {client}", a.median / b.median, a.median_retr / b.median_retr, target if client == pipelined else None)
                )
    if ratios:
        print()
        print(f"{'ratio of medians':<40} {'session':>8} {'RETR phase':>10}")
    for label, whole, retr, target in ratios:
        verdict = "" if target is None else (
            f"  target >= {target:.1f}: session {'met' if whole >= target else 'NOT met'}, RETR phase {'met' if retr >= target else 'NOT met'}"
        )
        print(f"{label:<40} {whole:7.2f}x {retr:9.2f}x{verdict}")
    load_after = loadavg()
    print(f"\nload average: {load_before:.2f} before, {load_after:.2f} after (the benchmark itself adds ~1)")
    ok = all(s.verified for s in summaries.values())
    if not ok:
        print("\nWARNING: some sessions did not return every message byte for byte (see 'ok').")

    if args.profile == "cprofile":
        stats_file = os.path.join(work, "appnet.cprofile")
        if os.path.exists(stats_file):
            import pstats

            print(f"\nappnet under cProfile ({stats_file}); top functions by own time:")
            pstats.Stats(stats_file).sort_stats("tottime").print_stats(25)
            pstats.Stats(stats_file).sort_stats("cumulative").print_stats(30)

    if args.markdown:
        print()
        print(markdown(ordered, cpu, ratios))

    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv if argv is None else argv,
            "messages": args.messages,
            "size": args.size,
            "window": args.window,
            "appnet_hash": args.appnet_hash,
            "appnet_auth_cache": args.appnet_auth_cache,
            "python": platform.python_version(),
            "dovecot": dovecot.dovecot_version() if "dovecot" in names else None,
            "cpus": os.cpu_count(),
            "pinned": client_cpus is not None,
            "loadavg": [load_before, load_after],
            "cpu_split": [{"server": n, "login_session_ms": l, "per_retr_us": r} for n, l, r in cpu],
            "sessions": [m.row() for s in summaries.values() for m in s.runs],
        }
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=1)
    return ok


if __name__ == "__main__":
    sys.exit(main())
