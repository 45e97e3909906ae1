"""
A real Dovecot server on loopback, for interop tests.

Usage::

    from tests.interop._dovecot import require_dovecot, start_dovecot

    class MyTests(SynchronousTestCase):
        def setUp(self):
            require_dovecot()                     # skip (or fail in CI)
            self.mail_root = os.path.abspath(self.mktemp())
            self.dovecot = start_dovecot(self.mail_root, {"alice": "secret"})
            self.addCleanup(self.dovecot.stop)

        def test_pop3(self):
            ...  # write mail under mail_root/alice, e.g. with MaildirStore
            self.dovecot.share_maildirs()         # see "Running as root"
            pop = poplib.POP3(self.dovecot.host, self.dovecot.pop3_port)

The server uses a private configuration (nothing under C{/etc/dovecot} is
read): a temporary C{base_dir}, C{state_dir} and log; a C{passwd-file}
passdb/userdb with the given users and C{{PLAIN}} passwords; mail in
C{maildir:<mail_root>/%u}, the layout of L{appnet.mailbox.MaildirStore},
with C{/} as the hierarchy separator (so Dovecot's C{Work/2026} is our
C{Work/2026}); POP3 (and IMAP, when Dovecot's imap binary is installed) on
127.0.0.1 ports from L{free_tcp_port}; no TLS; plaintext login allowed.

Running as root
===============
Dovecot refuses mail access as root (C{Mail access not allowed for root}),
so when the tests run as root the mail processes run as C{nobody:nogroup}
and the mail tree is handed to that user with L{DovecotServer.share_maildirs}
(C{chown -R}); ancestors of the mail root that others cannot search (trial's
temporary directories are 0700) get search permission (C{o+x}, not read).
The helper chowns on start and before every L{DovecotServer.doveadm} and
L{DovecotServer.lda} call; after writing mail yourself (as root) and before
Dovecot's POP3/IMAP reads it, call L{DovecotServer.share_maildirs}. Root can still read and write everything
Dovecot writes. As an ordinary user everything runs as that user and
C{share_maildirs} does nothing.

Supported: Dovecot 2.3 (the configuration grammar changed in 2.4; the
helper refuses 2.4+ with a clear error rather than guessing).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping

from tests.support import free_tcp_port, require_tool

#: Where distributions put Dovecot's service binaries (pop3, imap, lda).
LIBEXEC_DIRS = ("/usr/lib/dovecot", "/usr/libexec/dovecot",
                "/usr/local/libexec/dovecot")

HOST = "127.0.0.1"


class DovecotError(RuntimeError):
    """Dovecot did not start, or a doveadm/LDA run failed (log attached)."""


def require_dovecot() -> str:
    """
    Skip the test unless C{dovecot} and C{doveadm} are installed (or fail
    it under C{APPNET_REQUIRE_INTEROP=1}); return the C{dovecot} path.
    """
    require_tool("doveadm")
    return require_tool("dovecot")


def _libexec(name: str) -> str | None:
    for directory in LIBEXEC_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def imap_available() -> bool:
    """True when Dovecot's IMAP service binary is installed."""
    return _libexec("imap") is not None


def dovecot_version(dovecot: str | None = None) -> tuple[int, ...]:
    """The installed Dovecot's version, e.g. C{(2, 3, 19, 1)}."""
    dovecot = dovecot or require_dovecot()
    out = subprocess.run([dovecot, "--version"], capture_output=True,
                         text=True, check=True).stdout
    return tuple(int(part) for part in out.split()[0].split(".")
                 if part.isdigit())


class DovecotServer:
    """
    A running Dovecot; make one with L{start_dovecot}.

    @ivar host: C{127.0.0.1}
    @ivar pop3_port: the POP3 port (plaintext, C{USER}/C{PASS} and SASL
        PLAIN/LOGIN allowed)
    @ivar imap_port: the IMAP port, or C{None} when IMAP is not served
    @ivar mail_root: the directory holding C{<user>/} maildirs
    @ivar users: user name to password
    @ivar workdir: the private directory of config, sockets, logs
    @ivar config_path: the generated C{dovecot.conf} (pass it to Dovecot
        tools with C{-c})
    @ivar log_path: Dovecot's log file
    """

    def __init__(self, *, process: subprocess.Popen[bytes], pop3_port: int,
                 imap_port: int | None, mail_root: str,
                 users: Mapping[str, str], workdir: str, config_path: str,
                 log_path: str, mail_ids: tuple[int, int] | None,
                 remove_workdir: bool) -> None:
        self.host = HOST
        self.process = process
        self.pop3_port = pop3_port
        self.imap_port = imap_port
        self.mail_root = mail_root
        self.users = dict(users)
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = log_path
        self._mail_ids = mail_ids
        self._remove_workdir = remove_workdir

    def __repr__(self) -> str:
        return (f"<DovecotServer pid={self.process.pid} pop3={self.pop3_port}"
                f" imap={self.imap_port} mail={self.mail_root}>")

    def __enter__(self) -> DovecotServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True until the master process has exited."""
        return self.process.poll() is None

    def log(self) -> str:
        """Everything Dovecot logged so far."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def share_maildirs(self) -> None:
        """
        Give the mail tree to the user Dovecot's mail processes run as
        (only needed, and only done, when running as root).
        """
        if self._mail_ids is None:
            return
        uid, gid = self._mail_ids
        for directory, subdirs, files in os.walk(self.mail_root):
            os.chown(directory, uid, gid)
            for name in files:
                os.chown(os.path.join(directory, name), uid, gid,
                         follow_symlinks=False)

    def doveadm(self, *args: str, input: bytes | None = None,
                formatter: str | None = None) -> str:
        """
        Run C{doveadm -c <config> [-f formatter] <args>} against this
        server and return its standard output.

        @raise DovecotError: it exited non-zero (stderr attached)
        """
        self.share_maildirs()
        command = [shutil.which("doveadm") or "doveadm", "-c",
                   self.config_path]
        if formatter:
            command += ["-f", formatter]
        return self._run(command + list(args), input).decode(
            "utf-8", "replace")

    def fetch(self, user: str, fields: str, mailbox: str = "INBOX",
              search: str = "all") -> list[dict[str, str]]:
        """
        C{doveadm fetch} parsed: one dict per message, field name to value
        (multi-line values such as C{text} keep their inner line breaks but
        lose trailing ones: compare sizes for exact lengths).

        @param fields: space-separated doveadm fetch fields, e.g.
            C{"uid flags size.physical size.virtual"}
        """
        out = self.doveadm("fetch", "-u", user, fields, "mailbox", mailbox,
                           search, formatter="pager")
        names = fields.split()
        records = []
        for chunk in out.split("\f\n"):
            if not chunk.strip():
                continue
            record: dict[str, str] = {}
            current = None
            multiline = False
            for line in chunk.split("\n"):
                head, sep, rest = line.partition(": ")
                if not sep and line.endswith(":") and line[:-1] in names:
                    head, sep, rest = line[:-1], ":", None
                if sep and head in names and head not in record:
                    current = head
                    # "name:" alone starts a value on the following lines.
                    multiline = rest is None
                    record[head] = rest or ""
                elif current is not None:
                    if multiline:
                        record[current] = line
                        multiline = False
                    else:
                        record[current] += "\n" + line
            for name in names:
                if name in record:
                    record[name] = record[name].rstrip("\n")
            records.append(record)
        return records

    def lda(self, user: str, message: bytes, mailbox: str | None = None
            ) -> None:
        """
        Deliver a message with C{dovecot-lda}, as an MTA would: another MDA
        writing into the user's maildir.

        @raise DovecotError: the LDA failed
        """
        lda = _libexec("dovecot-lda") or shutil.which("dovecot-lda")
        if lda is None:
            raise DovecotError("dovecot-lda is not installed")
        self.share_maildirs()
        command = [lda, "-c", self.config_path, "-d", user]
        if mailbox is not None:
            command += ["-m", mailbox]
        self._run(command, message)

    def _run(self, command: list[str], input: bytes | None) -> bytes:
        result = subprocess.run(command, input=input, capture_output=True,
                                timeout=60)
        if result.returncode:
            raise DovecotError(
                f"{command!r} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')}\n{self.log()}")
        return result.stdout

    def stop(self, timeout: float = 15.0) -> None:
        """
        Stop the server and wait for it to exit (SIGTERM, then SIGKILL
        after C{timeout} seconds). Idempotent.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._remove_workdir = False


def _mail_ids(mail_user: str | None) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(mail_user or "nobody")
    gid = entry.pw_gid
    if mail_user is None:
        try:
            gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            pass
    return entry.pw_uid, gid


def _make_traversable(path: str) -> None:
    # Trial's and mkdtemp's directories are 0700 root: grant search (x, not
    # read) to others on each ancestor lacking it, so the unprivileged mail
    # user can reach the mail root by name.
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _config(*, workdir: str, mail_root: str, passwd_path: str,
            log_path: str, protocols: list[str], pop3_port: int,
            imap_port: int | None, mail_ids: tuple[int, int] | None,
            extra_config: str) -> str:
    if mail_ids is None:
        me = pwd.getpwuid(os.getuid()).pw_name
        identity = (f"default_login_user = {me}\n"
                    f"default_internal_user = {me}\n"
                    f"first_valid_uid = {os.getuid()}\n"
                    f"first_valid_gid = {os.getgid()}\n")
    else:
        uid, gid = mail_ids
        identity = (f"mail_uid = {uid}\nmail_gid = {gid}\n"
                    f"first_valid_uid = {uid}\nfirst_valid_gid = {gid}\n")
    imap_service = "" if imap_port is None else f"""
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    return f"""\
# Generated by tests/interop/_dovecot.py for one test run.
base_dir = {workdir}/run
state_dir = {workdir}/state
instance_name = appnet-test-{uuid.uuid4().hex[:12]}
log_path = {log_path}
protocols = {" ".join(protocols)}
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
postmaster_address = postmaster@example.invalid
mail_location = maildir:{mail_root}/%u
{identity}
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd_path}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{imap_service}
{extra_config}
"""


def _wait_for_ports(process: subprocess.Popen[bytes], ports: list[int],
                    deadline: float) -> bool:
    pending = list(ports)
    while pending:
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        try:
            with socket.create_connection((HOST, pending[0]), timeout=1.0):
                pending.pop(0)
                continue
        except OSError:
            pass
        # Wait on the process rather than sleep: returns at once if it dies.
        try:
            process.wait(0.02)
        except subprocess.TimeoutExpired:
            pass
    return True


def start_dovecot(mail_root: str, users: Mapping[str, str], *,
                  pop3_port: int | None = None,
                  imap_port: int | None = None,
                  imap: bool | None = None,
                  workdir: str | None = None,
                  mail_user: str | None = None,
                  extra_config: str = "",
                  timeout: float = 30.0) -> DovecotServer:
    """
    Start Dovecot serving the maildirs under C{mail_root} and return once
    every listener accepts connections.

    @param mail_root: directory of C{<user>/} maildirs (created if missing;
        each user's maildir appears on first use)
    @param users: user name to plaintext password (no C{:} or newlines)
    @param pop3_port: default: a free port
    @param imap_port: default: a free port when IMAP is served
    @param imap: serve IMAP? C{None} (default): if Dovecot's imap binary is
        installed; C{True}: required (skip/fail like L{require_tool} if not)
    @param workdir: where the config, sockets and log go; default: a new
        temporary directory, removed by L{DovecotServer.stop}
    @param mail_user: as root, the account mail processes run as (default
        C{nobody}); ignored otherwise
    @param extra_config: appended to the generated C{dovecot.conf}
    @param timeout: seconds to wait for the listeners
    @raise DovecotError: it did not come up (its log is in the message)
    """
    dovecot = require_dovecot()
    version = dovecot_version(dovecot)
    if version[:2] >= (2, 4):
        raise DovecotError(
            f"Dovecot {'.'.join(map(str, version))}: this helper writes 2.3 "
            "configuration syntax; 2.4 support is not written yet")
    if imap is None:
        imap = imap_available()
    elif imap and not imap_available():
        require_tool(*(os.path.join(d, "imap") for d in LIBEXEC_DIRS))
    for user, password in users.items():
        if any(c in user + password for c in ":\n\r\x00"):
            raise ValueError(f"user or password unusable in passwd-file: "
                             f"{user!r}")

    remove_workdir = workdir is None
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="dovecot-"))
    # Dovecot's auth process runs as its own unprivileged user and must
    # read the passwd-file (test passwords only).
    os.chmod(workdir, 0o755)
    mail_root = os.path.abspath(mail_root)
    os.makedirs(mail_root, exist_ok=True)
    for sub in ("run", "state", "home"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    mail_ids = _mail_ids(mail_user)

    passwd_path = os.path.join(workdir, "passwd")
    with open(passwd_path, "w") as f:
        for user, password in users.items():
            home = os.path.join(workdir, "home", user)
            os.makedirs(home, exist_ok=True)
            if mail_ids is not None:
                os.chown(home, *mail_ids)
            f.write(f"{user}:{{PLAIN}}{password}::::{home}::\n")
    if mail_ids is not None:
        # Dovecot's mail processes must reach and write the mail tree.
        _make_traversable(os.path.dirname(mail_root))
        os.chown(mail_root, *mail_ids)

    pop3_port = pop3_port or free_tcp_port(HOST)
    if imap:
        imap_port = imap_port or free_tcp_port(HOST)
    else:
        imap_port = None
    log_path = os.path.join(workdir, "dovecot.log")
    config_path = os.path.join(workdir, "dovecot.conf")
    with open(config_path, "w") as f:
        f.write(_config(workdir=workdir, mail_root=mail_root,
                        passwd_path=passwd_path, log_path=log_path,
                        protocols=["pop3"] + (["imap"] if imap else []),
                        pop3_port=pop3_port, imap_port=imap_port,
                        mail_ids=mail_ids, extra_config=extra_config))

    with open(os.path.join(workdir, "dovecot.stderr"), "wb") as stderr:
        process = subprocess.Popen([dovecot, "-F", "-c", config_path],
                                   stdin=subprocess.DEVNULL, stdout=stderr,
                                   stderr=subprocess.STDOUT)
    server = DovecotServer(
        process=process, pop3_port=pop3_port, imap_port=imap_port,
        mail_root=mail_root, users=users, workdir=workdir,
        config_path=config_path, log_path=log_path, mail_ids=mail_ids,
        remove_workdir=False)
    ports = [pop3_port] + ([imap_port] if imap_port else [])
    if not _wait_for_ports(process, ports, time.monotonic() + timeout):
        server.stop()
        with open(os.path.join(workdir, "dovecot.stderr"),
                  errors="replace") as f:
            output = f.read()
        raise DovecotError(f"Dovecot did not start listening on {ports}:\n"
                           f"{output}\n{server.log()}")
    server.share_maildirs()
    server._remove_workdir = remove_workdir
    return server
