"""
DNS benchmark: dnsperf against appnet, Twisted's stock server (C{twistd dns
--pyzone}), dnslib's server (C{ZoneResolver} + C{DNSServer}) and dnsmasq
(C{--addn-hosts}), all serving the same 1,000-name authoritative zone on
loopback.

    python bench/dns/run.py [--seconds 20] [--rounds 1] [--names 1000]
        [--only appnet,dnsmasq] [--dnslib-python /path/to/python]

Each server runs as a subprocess on a free port; dnsperf sends every name of
the query file (A records, all existing) for the given seconds with its
default 100 queries in flight. Prints a Markdown table: QPS, lost queries,
and each server's ratio to Twisted stock, to dnslib and to dnsmasq. Needs
dnsperf and dnsmasq (apt: dnsperf dnsmasq-base); dnslib (PyPI) runs under
C{--dnslib-python}, default this Python, so it can live in its own venv
(C{python -m venv /tmp/dnslib-venv; /tmp/dnslib-venv/bin/pip install
dnslib}). A missing server is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DOMAIN = "bench.test"

# dnslib's own zone server, as its C{python -m dnslib.zoneresolver} runs it:
# the zone text (with our origin, since its parser starts at the root),
# ZoneResolver (no glob), the threaded UDP DNSServer. Per-query logging is
# off (it prints two lines per query to stdout otherwise); errors still log.
DNSLIB_SERVER = """
import sys
from dnslib.server import DNSLogger, DNSServer
from dnslib.zoneresolver import ZoneResolver
zone_file, origin, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(zone_file) as f:
    resolver = ZoneResolver("$ORIGIN " + origin + ".\\n" + f.read())
print(len(resolver.zone), "records", flush=True)
DNSServer(resolver, address="127.0.0.1", port=port,
          logger=DNSLogger("-request,-reply", prefix=False)).start()
"""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def address(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def write_inputs(directory: str, names: int) -> dict[str, str]:
    """The zone for each server and dnsperf's query file; returns their paths."""
    zones = os.path.join(directory, "zones")
    os.makedirs(zones)
    soa = (
        f"@ 3600 IN SOA ns1.{DOMAIN}. hostmaster.{DOMAIN}. (\n"
        "    2024010101 ; serial\n    3600 900 604800 300 )\n"
    )
    with open(os.path.join(zones, f"{DOMAIN}.zone"), "w") as f:
        f.write(f"$TTL 3600\n{soa}@ IN NS ns1\nns1 IN A 10.255.0.1\n")
        for i in range(names):
            f.write(f"host{i:04d} IN A {address(i)}\n")
    pyzone = os.path.join(directory, "bench.pyzone")
    with open(pyzone, "w") as f:
        f.write(
            f"zone = [\n    SOA('{DOMAIN}', mname='ns1.{DOMAIN}', rname='hostmaster.{DOMAIN}',"
            " serial=2024010101, refresh=3600, retry=900, expire=604800, minimum=300),\n"
            f"    NS('{DOMAIN}', 'ns1.{DOMAIN}'),\n"
        )
        for i in range(names):
            f.write(f"    A('host{i:04d}.{DOMAIN}', '{address(i)}'),\n")
        f.write("]\n")
    hosts = os.path.join(directory, "bench.hosts")
    with open(hosts, "w") as f:
        for i in range(names):
            f.write(f"{address(i)} host{i:04d}.{DOMAIN}\n")
    queries = os.path.join(directory, "queries.txt")
    with open(queries, "w") as f:
        for i in range(names):
            f.write(f"host{i:04d}.{DOMAIN} A\n")
    return {"data": directory, "zones": zones, "pyzone": pyzone, "hosts": hosts, "queries": queries}


def has_dnslib(python: str | None) -> bool:
    if not python:
        return False
    try:
        return subprocess.run([python, "-c", "import dnslib"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def commands(paths: dict[str, str], port: int, dnslib_python: str | None = None) -> dict[str, list[str] | None]:
    """Server name -> command line serving the zone on C{port} (None: not installed).

    C{dnslib_python} is a Python that can import dnslib, or None.
    """
    py = sys.executable
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    dnsmasq = shutil.which("dnsmasq") or (os.path.exists("/usr/sbin/dnsmasq") and "/usr/sbin/dnsmasq")
    out: dict[str, list[str] | None] = {
        "appnet": [
            twistd, "--nodaemon", "--pidfile=", "appnet-dns", "--data", paths["data"],
            "--listen-udp", f"udp:{port}:interface=127.0.0.1",
            "--listen-tcp", f"tcp:{port}:interface=127.0.0.1",
        ],
        "twisted-stock": [
            twistd, "--nodaemon", "--pidfile=", "dns", "--pyzone", paths["pyzone"],
            "--interface", "127.0.0.1", "--port", str(port),
        ],
        "dnslib": [
            dnslib_python, "-c", DNSLIB_SERVER,
            os.path.join(paths["zones"], f"{DOMAIN}.zone"), DOMAIN, str(port),
        ] if dnslib_python else None,
        "dnsmasq": [
            dnsmasq, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={paths['hosts']}",
            "--cache-size=10000", "--log-facility=-", "--conf-file=/dev/null",
        ] if dnsmasq else None,
    }
    return out


def answers(port: int, name: str) -> bool:
    """True when the server on C{port} answers an A query for C{name}."""
    query = struct.pack("!6H", 1, 0, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, ("127.0.0.1", port))
            reply = s.recv(4096)
        except OSError:
            return False
    return len(reply) >= 12 and reply[3] & 0x0F == 0 and reply[7] > 0


def run_dnsperf(port: int, queries: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-l", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    noerror = re.search(r"NOERROR (\d+)", out)
    return {"qps": qps, "sent": sent, "lost": lost, "noerror": int(noerror.group(1)) if noerror else 0}


def bench(name: str, command: list[str], paths: dict[str, str], port: int, seconds: int) -> dict[str, float] | str:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(os.path.join(paths["data"], f"{name}.log"), "w")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not answers(port, f"host0000.{DOMAIN}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                return f"did not start (see {log.name})"
            time.sleep(0.1)
        return run_dnsperf(port, paths["queries"], seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="dnsperf run per server")
    parser.add_argument("--names", type=int, default=1000, help="names in the zone")
    parser.add_argument("--only", help="comma-separated servers to run")
    parser.add_argument(
        "--dnslib-python",
        default=sys.executable,
        help="a Python with dnslib installed (default: this one)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the servers in turn this many times; report each server's median round",
    )
    args = parser.parse_args(argv)
    if not shutil.which("dnsperf"):
        print("dnsperf is not installed (apt-get install dnsperf)", file=sys.stderr)
        return 2
    dnslib_python = args.dnslib_python if has_dnslib(args.dnslib_python) else None
    if dnslib_python is None and not (args.only and "dnslib" not in args.only.split(",")):
        print(f"# dnslib: {args.dnslib_python} cannot import dnslib; skipped", file=sys.stderr)
    rounds: dict[str, list[dict[str, float]]] = {}
    results: dict[str, dict[str, float] | str] = {}
    with tempfile.TemporaryDirectory(prefix="appnet-dns-bench-") as tmp:
        paths = write_inputs(tmp, args.names)
        for round_number in range(args.rounds):
            for name in list(commands(paths, 0)):
                if args.only and name not in args.only.split(","):
                    continue
                if isinstance(results.get(name), str):
                    continue
                port = free_port()
                command = commands(paths, port, dnslib_python)[name]
                if command is None:
                    results[name] = "not installed"
                    continue
                print(f"# round {round_number + 1}: {name}, {args.seconds}s ...", file=sys.stderr, flush=True)
                outcome = bench(name, command, paths, port, args.seconds)
                if isinstance(outcome, str):
                    results[name] = outcome
                    continue
                rounds.setdefault(name, []).append(outcome)
                print(f"#   {outcome['qps']:,.0f} QPS, {outcome['lost']} lost", file=sys.stderr, flush=True)
    order = list(commands({"data": "", "zones": "", "pyzone": "", "hosts": "", "queries": ""}, 0, "python"))
    for name, runs in rounds.items():
        if not isinstance(results.get(name), str):
            results[name] = sorted(runs, key=lambda r: r["qps"])[len(runs) // 2]
    results = {name: results[name] for name in order if name in results}
    refs = [("twisted-stock", "Twisted stock"), ("dnslib", "dnslib"), ("dnsmasq", "dnsmasq")]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{args.names}-name zone, dnsperf -l {args.seconds}, 100 queries in flight, loopback,"
        f" median of {args.rounds} round(s);"
        f" {os.cpu_count()} CPUs, load average at the end {load}\n"
    )
    print("| server | QPS (median) | rounds | lost (median round) | " + " | ".join(f"vs {label}" for _, label in refs) + " |")
    print("|---|---:|---|---:|" + "---:|" * len(refs))
    for name, r in results.items():
        if isinstance(r, str):
            print(f"| {name} | {r} | | |" + " |" * len(refs))
            continue
        loss = f"{r['lost']} ({100 * r['lost'] / max(r['sent'], 1):.2f}%)"
        each = " / ".join(f"{x['qps']:,.0f}" for x in rounds[name])
        ratios = []
        for ref_name, _ in refs:
            ref = results.get(ref_name)
            ratios.append(f"{r['qps'] / ref['qps']:.2f}x" if isinstance(ref, dict) else "-")
        print(f"| {name} | {r['qps']:,.0f} | {each} | {loss} | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
