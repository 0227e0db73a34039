"""Micro-batching: gather concurrent requests into one model batch.

Each request hands its job to `MicroBatcher.submit` (or awaits `MicroBatcher.run`); one
worker thread takes the first waiting job, then keeps collecting until it holds `max_batch`
jobs or `max_wait_s` has passed, and calls `process(jobs)` once for all of them. While a
batch runs, new jobs queue up, so under load batches fill without waiting at all; a lone
request pays at most `max_wait_s` of extra latency.

    batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=16, max_wait_s=0.005)
    batcher.submit(21).result()   # 42
    batcher.close()
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from ..errors import ConfigError

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")

_STOP = object()


@dataclass
class BatchStats:
    """What the batcher has done so far (reported by /healthz)."""

    batches: int = 0
    jobs: int = 0
    largest: int = 0
    busy_seconds: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0


class BatcherClosed(RuntimeError):
    """A job was submitted after `close()`."""


class MicroBatcher(Generic[JobT, ResultT]):
    """Run `process` over batches of jobs gathered from concurrent callers, in one thread.

    Args:
        process: takes a list of jobs and returns one result per job, in order. An exception
            it raises fails every job of that batch (the callers see it); it should return
            per-job errors as results instead when only some jobs are bad.
        max_batch: most jobs per call.
        max_wait_s: how long the first job of a batch waits for company.
        name: the worker thread's name.

    Raises:
        ConfigError: max_batch < 1 or max_wait_s < 0.
    """

    def __init__(self, process: Callable[[list[JobT]], Sequence[ResultT]], max_batch: int = 16,
                 max_wait_s: float = 0.005, name: str = "imgfeat-batcher"):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ConfigError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: JobT) -> Future:
        """Queue one job; the returned Future holds its result (or the batch's exception).

        Raises:
            BatcherClosed: the batcher was closed.
        """
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._queue.put((job, future))
        return future

    async def run(self, job: JobT) -> ResultT:
        """Submit a job and await its result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(job))

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the jobs already queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _gather(self, first: tuple) -> tuple[list[tuple], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)
            # a caller that gave up (cancelled its future) costs no model time
            live = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _run_batch(self, batch: list[tuple]) -> None:
        start = time.perf_counter()
        try:
            results = list(self.process([job for job, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"process returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, not swallowed
            for _, future in batch:
                future.set_exception(exc)
            return
        finally:
            self.stats.batches += 1
            self.stats.jobs += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.busy_seconds += time.perf_counter() - start
        for (_, future), result in zip(batch, results):
            future.set_result(result)
