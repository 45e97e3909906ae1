"""
The TFTP benchmark: one 64 MiB download per (server, client, options), on
loopback, one run each; MB/s (10^6 octets per second) and our ratio.

Servers:
  - appnet: C{twistd -n appnet-tftp} (this checkout), as deployed;
  - tftpd-hpa: C{in.tftpd -L -s DIR -a 127.0.0.1:PORT};
  - tftpy (PyPI), when C{--tftpy-python} names a Python that has it.

Clients and options (the issue's matrix):
  - tftp-hpa C{tftp}, RFC 1350 lock-step (blksize 512: it sends no options);
  - atftp C{--option "blksize 1468"} and C{"blksize 65464"};
  - atftp with C{"windowsize 16"} too (tftpd-hpa 5.2 ignores windowsize, so
    it runs lock-step there: the comparison shows what pipelining buys).

With C{--reactor-too}, a second appnet runs with C{[tftp] threads = 0}
(every transfer on the Twisted reactor, the path before transfer threads)
as one more column; with C{--baseline DIR}, one more appnet runs from
another checkout (say an export of an earlier commit) as C{appnet-baseline}.

Every download is checked (size and SHA-256) and bounded by C{--timeout};
every server is stopped at the end. With C{--runs N}, N rounds run one
after the other, each visiting every case and every server (in alternating
order), so load from elsewhere on the machine hits all servers alike; the
median of each cell is reported (and the best, printed per run). Run from
the repository root::

    python bench/tftp/run.py [--size-mib 64] [--runs 3] [--reactor-too]
                             [--tftpy-python /path/to/python]
                             [--case "blksize 1468" --case ...]

C{--case} keeps only the cases whose options are given exactly (as in the
table's "options" column); several may be given.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [
    ("tftp-hpa", "blksize 512", []),
    ("atftp", "blksize 1468", ["blksize 1468"]),
    ("atftp", "blksize 65464", ["blksize 65464"]),
    ("atftp", "blksize 1468, windowsize 16", ["blksize 1468", "windowsize 16"]),
    ("atftp", "blksize 65464, windowsize 16", ["blksize 65464", "windowsize 16"]),
]

_TFTPY_SERVER = """
import logging, sys, tftpy
logging.getLogger("tftpy").setLevel(logging.ERROR)
tftpy.TftpServer(sys.argv[1]).listen("127.0.0.1", int(sys.argv[2]))
"""


@dataclass
class Result:
    server: str
    client: str
    options: str
    seconds: list[float]
    error: str = ""

    def rate(self, size: int) -> float | None:
        """MB/s of the median run."""
        return size / statistics.median(self.seconds) / 1e6 if self.seconds else None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_udp_server(port: int, deadline: float) -> None:
    """Poll with an RRQ for a missing file until any answer comes (bounded)."""
    request = b"\x00\x01no-such-file\x00octet\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(request, ("127.0.0.1", port))
            try:
                s.recvfrom(2048)
                return
            except (socket.timeout, ConnectionRefusedError):
                continue
    raise RuntimeError(f"no TFTP server answered on port {port}")


def start_appnet(data_dir: str, port: int, tftp_config: str = "",
                 repo_root: str = REPO_ROOT) -> subprocess.Popen:
    """
    C{twistd appnet-tftp} from the checkout at C{repo_root}, with
    C{tftp_config} as the C{[tftp]} section of its config.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=repo_root)
    config = os.path.join(data_dir, f"appnet-{port}.toml")
    with open(config, "w") as f:
        f.write(f"[tftp]\n{tftp_config}\n")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", "-l", os.path.join(data_dir, f"twistd-{port}.log"),
         "appnet-tftp", "--config", config, "--data", data_dir,
         "--listen", f"udp:{port}:interface=127.0.0.1"],
        env=env, cwd=data_dir, stdin=subprocess.DEVNULL,
    )


def start_tftpd_hpa(root: str, port: int) -> subprocess.Popen:
    user = ["-u", "root"] if os.geteuid() == 0 else []
    tftpd = shutil.which("in.tftpd") or "/usr/sbin/in.tftpd"
    return subprocess.Popen([tftpd, "-L", "-s", root, "-a", f"127.0.0.1:{port}", *user],
                            stdin=subprocess.DEVNULL)


def start_tftpy(python: str, root: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([python, "-c", _TFTPY_SERVER, root, str(port)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def download(client: str, options: list[str], port: int, name: str, target: str,
             timeout: float) -> float:
    if client == "tftp-hpa":
        argv = ["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get", name, target]
    else:
        argv = ["atftp"]
        for option in options:
            argv += ["--option", option]
        argv += ["-g", "-r", name, "-l", target, "127.0.0.1", str(port)]
    if os.path.exists(target):
        os.unlink(target)
    return timed_run(argv, timeout)


def timed_run(argv: list[str], timeout: float) -> float:
    """
    Run C{argv} to its end; its wall time in seconds.

    The wait is a plain blocking C{waitpid}: C{subprocess.run(timeout=...)}
    polls for the child's exit with sleeps that grow to 50 ms, which rounds
    a 100 ms download up to 114 ms and a 115 ms one up to 164 ms (this is
    what made blksize 65464 downloads look like "115 or 165 ms"). The
    timeout is a timer that kills the child.

    @raise subprocess.TimeoutExpired: the child ran for C{timeout} seconds
    """
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        process.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - started
    if elapsed >= timeout:
        raise subprocess.TimeoutExpired(argv, timeout)
    return elapsed


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=180, help="seconds per download")
    parser.add_argument("--tftpy-python", help="a Python with tftpy installed")
    parser.add_argument("--runs", type=int, default=1,
                        help="interleaved rounds; each cell reports its median (default 1)")
    parser.add_argument("--reactor-too", action="store_true",
                        help="also run appnet with every transfer on the reactor (threads = 0)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run appnet from the checkout in DIR (as appnet-baseline)")
    parser.add_argument("--case", action="append", metavar="OPTIONS",
                        choices=[label for _, label, _ in CASES],
                        help="run only this case (repeatable), e.g. 'blksize 1468'")
    args = parser.parse_args()
    cases = [case for case in CASES if not args.case or case[1] in args.case]
    size = args.size_mib << 20
    work = tempfile.mkdtemp(prefix="tftp-bench-")
    try:
        appnet_data = os.path.join(work, "appnet")
        public = os.path.join(appnet_data, "files", "public")
        os.makedirs(public)
        source = os.path.join(public, "bench.bin")
        with open(source, "wb") as f:
            remaining = size
            while remaining:
                chunk = os.urandom(min(remaining, 1 << 20))
                f.write(chunk)
                remaining -= len(chunk)
        digest = sha256(source)
        # tftpd-hpa chroots into its root: give it its own hard link.
        hpa_root = os.path.join(work, "hpa")
        os.makedirs(hpa_root)
        os.link(source, os.path.join(hpa_root, "bench.bin"))
        servers: list[tuple[str, callable]] = [("appnet", lambda port: start_appnet(appnet_data, port))]
        if args.reactor_too:
            servers.append(("appnet-reactor",
                            lambda port: start_appnet(appnet_data, port, "threads = 0")))
        if args.baseline:
            baseline = os.path.abspath(args.baseline)
            servers.append(("appnet-baseline",
                            lambda port: start_appnet(appnet_data, port, repo_root=baseline)))
        servers.append(("tftpd-hpa", lambda port: start_tftpd_hpa(hpa_root, port)))
        if args.tftpy_python:
            servers.append(("tftpy", lambda port: start_tftpy(args.tftpy_python, hpa_root, port)))
        results = {(client, label, name): Result(name, client, label, [])
                   for client, label, _ in cases for name, _ in servers}
        # The client writes into memory where it can (/dev/shm): 64 MiB of
        # dirty pages on disk made atftp stall in writeback throttling now
        # and then (a whole 50 ms on a 115 ms download), whichever server it
        # was talking to.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else work
        target = os.path.join(shm, f"appnet-bench-tftp-{os.getpid()}.bin")
        # Every server runs at once, and each case visits them back to back
        # (in alternating order from round to round), so that a noisy
        # neighbour on the machine hits all of them alike.
        running: list[tuple[str, int, subprocess.Popen]] = []
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        try:
            for server_name, start in servers:
                port = free_udp_port()
                running.append((server_name, port, start(port)))
            for server_name, port, _ in running:
                wait_for_udp_server(port, time.monotonic() + 30)
            for round_number in range(max(1, args.runs)):
                order = running if round_number % 2 == 0 else running[::-1]
                for client, label, options in cases:
                    for server_name, port, _ in order:
                        if server_name == "tftpy" and "65464" in label:
                            continue  # keep the slowest server's run bounded
                        result = results[(client, label, server_name)]
                        try:
                            seconds = download(client, options, port, "bench.bin", target,
                                               args.timeout)
                        except subprocess.TimeoutExpired:
                            result.error = "timed out"
                            continue
                        if not (os.path.exists(target) and os.path.getsize(target) == size
                                and sha256(target) == digest):
                            result.error = "file differs"
                            continue
                        result.seconds.append(seconds)
                        print(f"round {round_number + 1} {server_name:14} {client:9} {label:30} "
                              f"{size / seconds / 1e6:8.1f} MB/s", flush=True)
        finally:
            for _, _, process in running:
                process.terminate()
            for _, _, process in running:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print(f"{args.size_mib} MiB download, loopback, median of {max(1, args.runs)} "
              "interleaved run(s); MB/s = 10^6 octets/s")
        print()
        others = [name for name, _ in servers if name != "appnet"]
        header = "| client | options | appnet | " + " | ".join(others) + " | " + \
            " | ".join(f"appnet / {name}" for name in others) + " |"
        print(header)
        print("|" + "---|" * (3 + 2 * len(others)))
        for client, label, _ in cases:
            row = {name: results[(client, label, name)] for name, _ in servers}
            ours = row.get("appnet")
            cells = [client, label, _fmt(ours, size)]
            cells += [_fmt(row.get(name), size) for name in others]
            for name in others:
                theirs = row.get(name)
                a, b = (ours.rate(size) if ours else None), (theirs.rate(size) if theirs else None)
                cells.append(f"{a / b:.2f}x" if a and b else "-")
            print("| " + " | ".join(cells) + " |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.path.exists(f"/dev/shm/appnet-bench-tftp-{os.getpid()}.bin"):
            os.unlink(f"/dev/shm/appnet-bench-tftp-{os.getpid()}.bin")


def _fmt(result: Result | None, size: int) -> str:
    if result is None:
        return "-"
    rate = result.rate(size)
    return f"{rate:.1f}" if rate else (result.error or "-")


if __name__ == "__main__":
    sys.exit(main())
