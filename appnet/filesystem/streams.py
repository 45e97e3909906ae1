"""
Streaming a file to a Twisted consumer without blocking the reactor.

L{FileProducer} reads one chunk per step of a L{twisted.internet.task}
cooperator and writes it to its consumer, pausing when the consumer (a TCP
or TLS transport, an HTTP request) pauses it. Each step is a single read of
at most L{DEFAULT_CHUNK_SIZE} bytes, so a multi-gigabyte download never
holds the reactor for longer than one read.

FTP over plain TCP should prefer C{os.sendfile} on the file's descriptor;
this is the path for TLS, HTTP and everything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from appnet.errors import StoreError

__all__ = ["DEFAULT_CHUNK_SIZE", "FileProducer", "stream_file"]

DEFAULT_CHUNK_SIZE = 128 * 1024
"""Bytes read per cooperator step: big enough that per-chunk Python overhead
is small against the copy, small enough that one read is quick."""


@implementer(IPushProducer)
class FileProducer:
    """
    Push the contents of an open binary file to an L{IConsumer}.

    @ivar bytes_sent: bytes written to the consumer so far
    """

    def __init__(self, file: BinaryIO, *, length: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """
        @param file: open for reading, positioned where streaming starts (as
            L{IFileView.open_read} returns it); the producer closes it when
            it finishes, fails or is stopped
        @param length: send at most this many bytes (HTTP ranges); C{None}
            sends to the end of the file
        @param chunk_size: bytes per read
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if length is not None and length < 0:
            raise ValueError("length must not be negative")
        self._file = file
        self._remaining = length
        self._chunk_size = chunk_size
        self._consumer: IConsumer | None = None
        self._task: task.CooperativeTask | None = None
        self._done: Deferred[int] | None = None
        self.bytes_sent = 0

    def start(self, consumer: IConsumer,
              cooperator: task.Cooperator | None = None) -> Deferred[int]:
        """
        Register with C{consumer} as a streaming producer and start sending.

        @param cooperator: schedules the reads; the global cooperator by
            default (tests pass one driven by a L{task.Clock})
        @return: a Deferred firing with the number of bytes sent once the
            last chunk is written and the producer unregistered; failing
            with L{CancelledError} if the consumer stopped the producer (or
            the Deferred was cancelled, which stops it), or with
            L{StoreError} if reading failed
        """
        if self._consumer is not None:
            raise RuntimeError("FileProducer already started")
        self._consumer = consumer
        self._done = Deferred(lambda d: self.stopProducing())
        # The task exists before registering, so that a consumer pausing or
        # stopping us from inside registerProducer is obeyed; its first read
        # happens on the cooperator's next step, never synchronously.
        cooperate = (cooperator or task).cooperate
        self._task = cooperate(self._chunks())
        self._task.whenDone().addCallbacks(self._finished, self._failed)
        consumer.registerProducer(self, True)
        return self._done

    def _chunks(self) -> Iterator[None]:
        assert self._consumer is not None
        while self._remaining is None or self._remaining > 0:
            size = self._chunk_size
            if self._remaining is not None:
                size = min(size, self._remaining)
            data = self._file.read(size)
            if not data:
                return
            if self._remaining is not None:
                self._remaining -= len(data)
            self.bytes_sent += len(data)
            self._consumer.write(data)
            yield None

    def _finished(self, _: object) -> None:
        self._file.close()
        assert self._consumer is not None and self._done is not None
        self._consumer.unregisterProducer()
        if not self._done.called:
            self._done.callback(self.bytes_sent)

    def _failed(self, reason: Failure) -> None:
        self._file.close()
        assert self._done is not None
        if self._done.called:
            return
        if reason.check(task.TaskStopped):
            self._done.errback(CancelledError())
        elif reason.check(OSError):
            self._done.errback(StoreError(f"read failed: {reason.value}"))
        else:
            self._done.errback(reason)

    def pauseProducing(self) -> None:
        """Stop reading until L{resumeProducing} (the consumer is full)."""
        if self._task is not None:
            try:
                self._task.pause()
            except task.TaskFinished:
                pass

    def resumeProducing(self) -> None:
        """Carry on reading after L{pauseProducing}."""
        if self._task is not None:
            try:
                self._task.resume()
            except (task.NotPaused, task.TaskFinished):
                pass

    def stopProducing(self) -> None:
        """Stop for good: close the file and fail the start Deferred with
        L{CancelledError}. Safe to call at any time, more than once."""
        if self._task is not None:
            try:
                self._task.stop()
            except task.TaskFinished:
                pass


def stream_file(file: BinaryIO, consumer: IConsumer, *, length: int | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE,
                cooperator: task.Cooperator | None = None) -> Deferred[int]:
    """
    Stream C{file} to C{consumer} with a L{FileProducer}.

    @return: see L{FileProducer.start}
    """
    return FileProducer(file, length=length, chunk_size=chunk_size).start(
        consumer, cooperator
    )
