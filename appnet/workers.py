"""
A few worker threads for short blocking jobs, lighter than Twisted's
thread pool.

L{twisted.internet.threads.deferToThread} is sound, but under SMTP load
its machinery (C{Team}, C{LockWorker}, the context tracker) took a fifth of
the reactor thread's time for the mailbox store's two jobs per batch
(py-spy, GIL-holding samples). L{Workers} does the same with one
C{SimpleQueue}: a job is put on it, a thread runs it, and its result or
failure goes back to the reactor with C{callFromThread}.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Workers", "shared_workers", "shared_writer"]


class Workers:
    """
    C{workers(f, *args)} runs C{f(*args)} in one of C{count} daemon threads
    and returns a Deferred of its result, fired in the reactor thread.

    Threads start on first use and stop at the reactor's shutdown (after
    the jobs queued before it).
    """

    def __init__(self, reactor: Any = None, count: int = 3, name: str = "appnet-worker") -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]] | None] = (
            queue.SimpleQueue())
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        if not self._threads:
            self._start()
        self._jobs.put((f, args, d))
        return d

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self._count):
                thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._reactor.addSystemEventTrigger("after", "shutdown", self.stop)

    def _work(self) -> None:
        call = self._reactor.callFromThread
        while True:
            job = self._jobs.get()
            if job is None:
                return
            f, args, d = job
            try:
                result = f(*args)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)
            del job, f, args, d

    def stop(self) -> None:
        """Let the queued jobs finish, then end the threads (joined)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()


_shared: Workers | None = None
_writer: Workers | None = None


def shared_workers() -> Workers:
    """The process's one L{Workers} on the global reactor (made on first use)."""
    global _shared
    if _shared is None:
        _shared = Workers()
    return _shared


def shared_writer() -> Workers:
    """
    The process's one single-thread L{Workers} for mailbox deliveries on the
    global reactor (made on first use): jobs run one at a time, in the
    order they were given.
    """
    global _writer
    if _writer is None:
        _writer = Workers(count=1, name="appnet-mail-writer")
    return _writer
