"""
The FTP benchmark: appnet against vsftpd, pyftpdlib and Twisted's stock
C{twistd ftp}, each started here on a free port on 127.0.0.1.

Three measurements per server, each the best of C{--repeat} rounds (the
servers run side by side and every round visits each in turn):

 - download: C{curl -o /dev/null} of one C{--size} MiB file (binary, EPSV);
 - upload: C{curl -T} of the same file;
 - small files: C{lftp mirror} of a directory of C{--files} files of 1-4 KiB
   in one session (one control connection, a data connection per file).

Everything is read from the page cache (the file is read once before the
runs). MB/s is 10**6 bytes per second of wall time as the client saw it.
Prints a Markdown table with the ratios the issue asks for (download vs
vsftpd, upload and small files vs pyftpdlib). Run (as root, for vsftpd)::

    python bench/ftp/run.py --size 512 --files 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
USER, PASSWORD = "bench", "bench-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def make_data(root: str, source: str, files: int) -> None:
    """Hard-link the big file into C{root} and write the small files."""
    os.makedirs(os.path.join(root, "small"), exist_ok=True)
    os.link(source, os.path.join(root, "big.bin"))
    for i in range(files):
        with open(os.path.join(root, "small", f"f{i:04d}.txt"), "wb") as f:
            f.write(os.urandom(1024 + (i * 37) % 3072))


class Server:
    name = ""
    anonymous = False

    def __init__(self, work: str, source: str, files: int) -> None:
        self.port = free_port()
        self.work = os.path.join(work, self.name)
        self.root = self.make_root()
        make_data(self.root, source, files)
        self.upload_dir = self.root
        self.proc: subprocess.Popen | None = None

    def make_root(self) -> str:
        root = os.path.join(self.work, "root")
        os.makedirs(root)
        return root

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env = self.command()
        self.log = open(os.path.join(self.work, "server.log"), "wb")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.work)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def url(self, path: str) -> str:
        return f"ftp://127.0.0.1:{self.port}/{path}"

    def curl_auth(self) -> list[str]:
        return [] if self.anonymous else ["-u", f"{USER}:{PASSWORD}"]

    def lftp_open(self) -> str:
        if self.anonymous:
            return f"open ftp://127.0.0.1:{self.port}"
        return f"open -u {USER},{PASSWORD} ftp://127.0.0.1:{self.port}"

    def upload_path(self, i: int) -> str:
        return f"up{i}.bin"


class Appnet(Server):
    name = "appnet"

    def make_root(self) -> str:
        self.data = os.path.join(self.work, "data")
        root = os.path.join(self.data, "files", "home", USER)
        os.makedirs(root)
        return root

    def command(self):
        return [sys.executable, os.path.join(HERE, "appnet_server.py")], {
            "BENCH_DATA": self.data, "BENCH_PORT": str(self.port), "BENCH_USER": USER,
            "BENCH_PASSWORD": PASSWORD, "PYTHONPATH": REPO,
        }


class Pyftpdlib(Server):
    name = "pyftpdlib"

    def command(self):
        return [sys.executable, os.path.join(HERE, "pyftpdlib_server.py")], {
            "BENCH_HOME": self.root, "BENCH_PORT": str(self.port), "BENCH_USER": USER,
            "BENCH_PASSWORD": PASSWORD,
        }


class TwistedStock(Server):
    name = "twisted-stock"
    nodelay = "0"

    def command(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "-n", "--pidfile=", "-l", "-", "-y",
                os.path.join(HERE, "twisted_stock.tac")], {
            "BENCH_HOME": self.root, "BENCH_PORT": str(self.port), "BENCH_USER": USER,
            "BENCH_PASSWORD": PASSWORD, "BENCH_NODELAY": self.nodelay,
        }


class TwistedStockNoDelay(TwistedStock):
    name = "twisted-stock+nodelay"
    nodelay = "1"


class Vsftpd(Server):
    """vsftpd, anonymous (local users need PAM): downloads from the root,
    uploads into up/ (vsftpd refuses a writable anonymous root)."""

    name = "vsftpd"
    anonymous = True

    def make_root(self) -> str:
        root = os.path.join(self.work, "root")
        os.makedirs(os.path.join(root, "up"))
        os.chmod(self.work, 0o755)
        os.chmod(root, 0o755)
        os.chmod(os.path.join(root, "up"), 0o777)
        return root

    def command(self):
        os.makedirs("/var/run/vsftpd/empty", exist_ok=True)
        conf = os.path.join(self.work, "vsftpd.conf")
        with open(conf, "w") as f:
            f.write(f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={self.port}
background=NO
anonymous_enable=YES
anon_root={self.root}
no_anon_password=YES
local_enable=NO
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
ftp_username=ftp
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
xferlog_enable=NO
use_sendfile=YES
max_per_ip=0
max_clients=0
""")
        return ["/usr/sbin/vsftpd", conf], {}

    def upload_path(self, i: int) -> str:
        return f"up/up{i}.bin"


SERVERS = {c.name: c for c in (Appnet, Vsftpd, Pyftpdlib, TwistedStock, TwistedStockNoDelay)}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return wall


def measure_once(server: Server, source: str, size: int, files: int, n: int,
                 work: str) -> dict[str, float]:
    """One round of the three measurements against one server, checked."""
    down = timed(["curl", "-sS", "-o", "/dev/null", *server.curl_auth(), server.url("big.bin")])
    # Every upload starts with no dirty pages waiting for writeback, or the
    # kernel would throttle whichever server comes after a big write.
    os.sync()
    up = timed(["curl", "-sS", *server.curl_auth(), "-T", source,
                server.url(server.upload_path(n))])
    uploaded = os.path.join(server.upload_dir, server.upload_path(n))
    if os.path.getsize(uploaded) != size:
        raise RuntimeError(f"{server.name}: upload has {os.path.getsize(uploaded)} bytes")
    os.remove(uploaded)
    os.sync()
    dest = os.path.join(work, f"mirror-{server.name}-{n}")
    small = timed([
        "lftp", "-c",
        f"set ftp:ssl-allow false; set net:max-retries 1; {server.lftp_open()}; "
        f"mirror small {dest}",
    ])
    got = len(os.listdir(dest))
    shutil.rmtree(dest)
    if got != files:
        raise RuntimeError(f"{server.name}: mirrored {got} files of {files}")
    return {"download": size / down / 1e6, "upload": size / up / 1e6, "small": files / small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="MiB of the big file")
    parser.add_argument("--files", type=int, default=200, help="number of small files")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="appnet-bench-ftp-")
    os.chmod(work, 0o755)
    source = os.path.join(work, "big.bin")
    size = args.size * 1024 * 1024
    with open(source, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.size):
            f.write(chunk)
    os.chmod(source, 0o644)
    results: dict[str, dict[str, float]] = {}
    servers = [SERVERS[name](work, source, args.files) for name in args.servers.split(",")]
    try:
        for server in servers:
            server.start()
        # Rounds interleave the servers, so that load from elsewhere on the
        # machine falls on all of them alike; the best round counts.
        for n in range(args.repeat):
            for server in servers:
                r = measure_once(server, source, size, args.files, n, work)
                best = results.setdefault(server.name, r)
                for key, value in r.items():
                    best[key] = max(best[key], value)
                print(f"round {n + 1} {server.name}: download {r['download']:.0f} MB/s, "
                      f"upload {r['upload']:.0f} MB/s, {r['small']:.0f} files/s",
                      file=sys.stderr)
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"| server | download {args.size} MiB (MB/s) | upload {args.size} MiB (MB/s) "
          f"| {args.files} small files, one lftp session (files/s) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['download']:,.0f} | {r['upload']:,.0f} | {r['small']:,.0f} |")
    if "appnet" in results:
        a = results["appnet"]
        if "vsftpd" in results:
            print(f"\nappnet / vsftpd download: {a['download'] / results['vsftpd']['download']:.2f}x")
        if "pyftpdlib" in results:
            p = results["pyftpdlib"]
            print(f"appnet / pyftpdlib upload: {a['upload'] / p['upload']:.2f}x")
            print(f"appnet / pyftpdlib small files: {a['small'] / p['small']:.2f}x")


if __name__ == "__main__":
    main()
