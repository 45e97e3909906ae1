"""
Integration tests for the entry points: C{twistd --help} lists the appnet
plugins, the plugin module imports no reactor, a bad config stops start-up
with one line, C{twistd appnet-pop3} serves, a server killed with SIGKILL
mid-session loses no message and applies no deletion, the maildrop lock
holds across processes, and C{appnet pop3 fetch} works from the shell.

Every subprocess runs with a bounded time; the helpers here
(L{run_process}, L{start_twistd}, L{start_pop3_twistd}) are also used by the
interop tests.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import subprocess
import sys
from typing import Any

from twisted.internet import defer, error, protocol, threads
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, TestCase

from appnet.testing import start_mail_server
from tests.integration.test_pop3_loopback import (
    DOTTED,
    PLAIN,
    connect_raw,
    lf,
    poll_until,
    the_reactor,
)

from tests.support import appnet_argv, run_process, subprocess_env, twistd_argv


class ServerProcess(protocol.ProcessProtocol):
    """
    A long-running child (e.g. twistd): collects its output; C{ended} fires
    with the exit reason (C{ProcessDone} or C{ProcessTerminated}).
    """

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred = defer.Deferred()

    @property
    def output(self) -> str:
        """Everything it wrote so far, stdout then stderr."""
        return (b"".join(self.out) + b"".join(self.err)).decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)

    @property
    def running(self) -> bool:
        return not self.ended.called

    def signal(self, name: str) -> None:
        """Send a signal (C{"KILL"}, C{"TERM"}) if still running."""
        if self.running:
            try:
                self.transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    async def wait(self, timeout: float = 20) -> Any:
        """The exit reason, waiting at most C{timeout} seconds."""
        if self.ended.called:
            return await self.ended
        waiter: defer.Deferred = defer.Deferred()

        def relay(result: Any) -> Any:
            if not waiter.called:
                waiter.callback(result)
            return result

        self.ended.addBoth(relay)
        waiter.addTimeout(timeout, the_reactor())
        return await waiter


def start_twistd(testcase: TestCase, args: list[str], cwd: str) -> ServerProcess:
    """
    Spawn C{twistd ARGS}; it is killed (SIGKILL) and reaped at the test's
    cleanup if still running.
    """
    argv = twistd_argv() + args
    proc = ServerProcess()
    the_reactor().spawnProcess(proc, argv[0], argv, env=subprocess_env(), path=cwd)

    async def cleanup() -> None:
        if proc.running:
            proc.signal("KILL")
            await proc.wait(10)

    testcase.addCleanup(cleanup)
    return proc


#: Twisted's log line when a TCP port is bound: "<factory> starting on <port>".
_STARTING_ON = re.compile(r" starting on (\d+)")


async def start_pop3_twistd(
    testcase: TestCase, data_dir: str, cwd: str, timeout: float = 30
) -> tuple[ServerProcess, int]:
    """
    Run C{twistd -n --pidfile= appnet-pop3 --data DATA_DIR --listen
    tcp:0:interface=127.0.0.1 --listen-tls none}, read the port it bound
    from its log (no race for a "free" port), and read the C{+OK} greeting.

    @return: C{(process, port)}
    @raise FailTest: it exits or does not greet within C{timeout} seconds
    """
    proc = start_twistd(
        testcase,
        [
            "-n",
            "--pidfile=",
            "appnet-pop3",
            "--data",
            data_dir,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen-tls",
            "none",
        ],
        cwd=cwd,
    )

    def bound() -> int | None:
        if not proc.running:
            raise FailTest(f"twistd exited before listening:\n{proc.output}")
        found = _STARTING_ON.search(proc.output)
        return int(found.group(1)) if found else None

    try:
        port = await poll_until(bound, timeout=timeout)
    except defer.TimeoutError:
        raise FailTest(f"twistd not listening after {timeout}s:\n{proc.output}") from None
    client, greeting = await connect_raw(testcase, "127.0.0.1", port)
    await client.close()
    if not greeting.startswith(b"+OK "):
        raise FailTest(f"bad greeting {greeting!r}:\n{proc.output}")
    return proc, port


def decode(completed: subprocess.CompletedProcess) -> tuple[str, str]:
    """stdout and stderr of a finished child, as text."""
    return (
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


async def add_user(data_dir: str, name: str, password: str) -> None:
    """C{appnet --data DIR user add NAME}, the password piped on stdin."""
    done = await run_process(
        appnet_argv() + ["--data", data_dir, "user", "add", name],
        stdin=password.encode() + b"\n",
    )
    if done.returncode != 0:
        raise FailTest(f"appnet user add failed: {decode(done)}")


async def deliver(data_dir: str, user: str, message: bytes) -> None:
    """C{appnet --data DIR mail deliver USER < message} (the local delivery agent)."""
    done = await run_process(
        appnet_argv() + ["--data", data_dir, "mail", "deliver", user], stdin=message
    )
    if done.returncode != 0:
        raise FailTest(f"appnet mail deliver failed: {decode(done)}")


class TwistdPluginTests(TestCase):
    """twistd finds the appnet plugins, and a bad config stops start-up cleanly."""

    timeout = 120

    async def test_help_lists_plugins(self) -> None:
        """
        C{twistd --help} (the repo on PYTHONPATH) lists C{appnet} and
        C{appnet-pop3} among its commands, with no traceback or plugin-cache
        complaint on stderr.
        """
        cwd = self.mktemp()
        os.makedirs(cwd)
        done = await run_process(twistd_argv() + ["--help"], cwd=cwd)
        out, err = decode(done)
        self.assertEqual(done.returncode, 0, err)
        commands = {
            line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()
        }
        self.assertIn("appnet", commands, out)
        self.assertIn("appnet-pop3", commands, out)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("dropin", err)

    async def test_plugin_module_imports_no_reactor(self) -> None:
        """Importing the twistd plugin module installs no reactor."""
        done = await run_process(
            [
                sys.executable,
                "-c",
                "import twisted.plugins.appnet_plugins, sys; "
                "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'",
            ]
        )
        self.assertEqual(done.returncode, 0, decode(done))

    async def _bad_config(self, toml: str) -> tuple[int, str, str, str]:
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        config = os.path.join(tmp, "BAD.toml")
        with open(config, "w") as f:
            f.write(toml)
        data = os.path.join(tmp, "data")
        done = await run_process(
            twistd_argv() + ["-n", "--pidfile=", "appnet", "--config", config, "--data", data],
            cwd=tmp,
            timeout=30,
        )
        out, err = decode(done)
        return done.returncode, out, err, data

    async def test_bad_value_exits_with_one_line(self) -> None:
        """
        C{twistd -n appnet --config BAD.toml} with a bad value exits non-zero,
        printing exactly one line that names the key and the value; no
        traceback and nothing started (no data directory created).
        """
        rc, out, err, data = await self._bad_config('[pop3]\nidle_timeout = "soon"\n')
        self.assertNotEqual(rc, 0)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("pop3.idle_timeout", lines[0])
        self.assertIn("soon", lines[0])
        self.assertNotIn("Traceback", out + err)
        self.assertFalse(os.path.exists(data), "a bad config must start nothing")

    async def test_unknown_key_exits_with_one_line(self) -> None:
        """An unknown key stops start-up the same way, naming the key."""
        rc, out, err, _ = await self._bad_config("[pop3]\nlisten_port = 110\n")
        self.assertNotEqual(rc, 0)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("pop3.listen_port", lines[0])

    async def test_appnet_pop3_serves(self) -> None:
        """
        C{twistd -n --pidfile= appnet-pop3 --data TMP --listen
        tcp:0:interface=127.0.0.1 --listen-tls none} accepts connections and greets with C{+OK}; on
        SIGTERM it shuts down cleanly (no traceback) and writes nothing to
        the default ./appnet-data.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        proc, port = await start_pop3_twistd(self, os.path.join(tmp, "data"), tmp)
        client, greeting = await connect_raw(self, "127.0.0.1", port)
        self.assertTrue(greeting.startswith(b"+OK "), greeting)
        self.assertTrue((await client.command(b"QUIT")).startswith(b"+OK"))
        proc.signal("TERM")
        reason = await proc.wait(20)
        # twistd stops the reactor, then re-raises the signal so its exit
        # status says it was terminated (Twisted >= 22.8).
        if not isinstance(reason, error.ProcessDone):
            self.assertIsInstance(reason, error.ProcessTerminated, proc.output)
            self.assertEqual(reason.signal, signal.SIGTERM, proc.output)
        self.assertIn("Server Shut Down.", proc.output)
        self.assertNotIn("Traceback", proc.output)
        self.assertFalse(os.path.exists(os.path.join(tmp, "appnet-data")))


MESSAGES = [
    b"From: a@example.org\nSubject: first\n\nOne.\n",
    b"From: b@example.org\nSubject: second\n\nTwo.\n.dot\n",
    b"From: c@example.org\nSubject: third\n\nThree.\n",
]


class KillNineTests(TestCase):
    """A server killed with SIGKILL mid-session loses nothing and applies no deletion."""

    timeout = 180

    async def test_kill_9_mid_session(self) -> None:
        """
        Three messages delivered; a poplib session marks message 1 deleted
        and the server is killed with SIGKILL before QUIT. After a restart
        all three are there, unchanged, with the same UIDLs (and the
        maildrop is not left locked). A session that QUITs after DELE then
        removes exactly that message.
        """
        self.tmp = os.path.abspath(self.mktemp())
        self.data = os.path.join(self.tmp, "data")
        os.makedirs(self.tmp)
        await add_user(self.data, "alice", "pw-alice")
        proc, port = await start_pop3_twistd(self, self.data, self.tmp)
        for message in MESSAGES:
            await deliver(self.data, "alice", message)

        def dele_first() -> tuple[poplib.POP3, tuple[int, int], list[bytes]]:
            pop = poplib.POP3("127.0.0.1", port, timeout=10)
            pop.user("alice")
            pop.pass_("pw-alice")
            stat = pop.stat()
            uids = pop.uidl()[1]
            pop.dele(1)
            return pop, stat, uids

        pop, stat, uids = await threads.deferToThread(dele_first)
        self.assertEqual(stat[0], 3)
        proc.signal("KILL")
        reason = await proc.wait(20)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)
        with self.assertRaises((poplib.error_proto, OSError)):
            await threads.deferToThread(pop.noop)
        pop.close()

        proc, port = await start_pop3_twistd(self, self.data, self.tmp)

        def check_all() -> tuple[tuple[int, int], list[bytes], list[bytes]]:
            pop = poplib.POP3("127.0.0.1", port, timeout=10)
            try:
                pop.user("alice")
                pop.pass_("pw-alice")
                stat = pop.stat()
                uids = pop.uidl()[1]
                bodies = [b"\n".join(pop.retr(n)[1]) + b"\n" for n in range(1, stat[0] + 1)]
                pop.quit()
                return stat, uids, bodies
            finally:
                pop.close()

        stat_after, uids_after, bodies = await threads.deferToThread(check_all)
        self.assertEqual(stat_after, stat)
        self.assertEqual(uids_after, uids)
        self.assertEqual(bodies, MESSAGES)

        def dele_and_quit() -> bytes:
            pop = poplib.POP3("127.0.0.1", port, timeout=10)
            try:
                pop.user("alice")
                pop.pass_("pw-alice")
                pop.dele(1)
                return pop.quit()
            finally:
                pop.close()

        bye = await threads.deferToThread(dele_and_quit)
        self.assertTrue(bye.startswith(b"+OK"), bye)
        stat_final, uids_final, bodies_final = await threads.deferToThread(check_all)
        self.assertEqual(stat_final[0], 2)
        self.assertEqual([u.split()[1] for u in uids_final], [u.split()[1] for u in uids[1:]])
        self.assertEqual(bodies_final, MESSAGES[1:])


class CrossProcessTests(TestCase):
    """Two server processes over one data directory share the maildrop lock."""

    timeout = 120

    async def test_maildrop_lock_spans_processes(self) -> None:
        """
        While a session on a twistd server holds alice's maildrop, a login
        to an in-process server over the same data directory gets
        [IN-USE], and the other way round; after QUIT the lock is free.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        data = os.path.join(tmp, "data")
        local = await start_mail_server(self, users={"alice": "pw-alice"}, data_dir=data)
        await local.deliver("alice", DOTTED)
        _, port = await start_pop3_twistd(self, data, tmp)

        remote_session, _ = await connect_raw(self, "127.0.0.1", port)
        self.assertTrue((await remote_session.login("alice", "pw-alice")).startswith(b"+OK"))
        local_session, _ = await connect_raw(self, local.host, local.pop3_port)
        reply = await local_session.login("alice", "pw-alice")
        self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
        self.assertTrue((await remote_session.command(b"QUIT")).startswith(b"+OK"))
        await remote_session.closed

        self.assertTrue((await local_session.login("alice", "pw-alice")).startswith(b"+OK"))
        other, _ = await connect_raw(self, "127.0.0.1", port)
        reply = await other.login("alice", "pw-alice")
        self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)


class AppnetCommandTests(TestCase):
    """C{appnet pop3 fetch}: the client on the command line."""

    timeout = 120

    async def setUp(self) -> None:
        self.server = await start_mail_server(self, users={"alice": "pw-alice"})
        await self.server.deliver("alice", DOTTED)
        await self.server.deliver("alice", PLAIN)
        self.out = os.path.abspath(self.mktemp())

    def fetch(self, password: str, *args: str) -> defer.Deferred:
        return run_process(
            appnet_argv()
            + ["pop3", "fetch", "--host", self.server.host, "--port", str(self.server.pop3_port)]
            + ["--user", "alice", "--out", self.out, *args],
            stdin=password.encode() + b"\n",
            timeout=60,
        )

    async def test_fetch_saves_messages(self) -> None:
        """
        C{appnet pop3 fetch --tls starttls --cafile CERT --delete} (password
        on stdin) saves each message as an .eml file, byte for byte, and
        deletes them on the server.
        """
        done = await self.fetch(
            "pw-alice", "--tls", "starttls", "--cafile", self.server.cert_path, "--delete"
        )
        out, err = decode(done)
        self.assertEqual(done.returncode, 0, err)
        self.assertIn("2 of 2", out)
        saved = []
        for name in sorted(os.listdir(self.out)):
            self.assertTrue(name.endswith(".eml"), name)
            with open(os.path.join(self.out, name), "rb") as f:
                saved.append(lf(f.read()))
        self.assertEqual(saved, [DOTTED, PLAIN])
        self.assertEqual(self.server.raw_received("alice"), [])

    async def test_wrong_password_one_line(self) -> None:
        """
        A refused login exits non-zero with one line carrying the server's
        [AUTH] text on stderr, and no traceback.
        """
        done = await self.fetch("wrong", "--tls", "none")
        out, err = decode(done)
        self.assertNotEqual(done.returncode, 0)
        self.assertNotIn("Traceback", err)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("[AUTH]", lines[0])
