"""
L{appnet.workers.Workers}: jobs run in worker threads and their results
come back in the reactor thread; failures too; stop ends the threads after
the queued jobs. The shared writer runs its jobs one at a time, in order.
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from appnet.workers import Workers, shared_workers, shared_writer


class WorkersTests(TestCase):
    def setUp(self) -> None:
        self.workers = Workers(reactor, count=2, name="test-worker")
        self.addCleanup(self.workers.stop)

    async def test_result_in_reactor_thread(self) -> None:
        """The job runs in a worker thread; its Deferred fires in the reactor's."""
        seen: list[str] = []

        def job(a: int, b: int) -> int:
            seen.append(threading.current_thread().name)
            return a + b

        fired_in: list[str] = []
        d = self.workers(job, 2, 3)
        d.addCallback(lambda r: fired_in.append(threading.current_thread().name) or r)
        self.assertEqual(await d, 5)
        self.assertTrue(seen[0].startswith("test-worker-"))
        self.assertEqual(fired_in, [threading.main_thread().name])

    async def test_failure(self) -> None:
        """An exception in the job fails its Deferred with it."""

        def job() -> None:
            raise ValueError("boom")

        with self.assertRaises(ValueError):
            await self.workers(job)

    async def test_many_jobs(self) -> None:
        """Every queued job runs once."""
        results = await gatherResults([self.workers(lambda i=i: i * i) for i in range(50)])
        self.assertEqual(results, [i * i for i in range(50)])

    def test_stop_runs_queued_jobs_first(self) -> None:
        """stop() lets the jobs queued before it finish, then joins the threads."""
        ran: list[int] = []
        gate = threading.Event()
        self.workers(gate.wait, 5)
        for i in range(5):
            self.workers(ran.append, i)
        gate.set()
        self.workers.stop()
        self.assertEqual(sorted(ran), list(range(5)))
        self.assertEqual(self.workers._threads, [])

    def test_shared(self) -> None:
        """One shared instance per process."""
        self.assertIs(shared_workers(), shared_workers())

    async def test_shared_writer_runs_jobs_in_order_on_one_thread(self) -> None:
        """The shared writer is one thread: jobs run one by one, as queued."""
        writer = shared_writer()
        self.assertIs(writer, shared_writer())
        self.assertIsNot(writer, shared_workers())
        ran: list[tuple[int, str]] = []
        gate = threading.Event()
        first = writer(gate.wait, 5)
        rest = [writer(lambda i=i: ran.append((i, threading.current_thread().name))) for i in range(20)]
        gate.set()
        await gatherResults([first, *rest])
        self.assertEqual([i for i, _ in ran], list(range(20)))
        self.assertEqual({name for _, name in ran}, {"appnet-mail-writer-0"})
