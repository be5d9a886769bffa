"""Batching concurrent sessions' catch-ups into one compiled call.

The cloud's gRPC handler threads each serve one session's inference
request. With batching on (`ServerConfig.max_batch` > 1) a handler hands
its catch-up to a `CatchUpBatcher` and waits: one worker thread takes the
oldest request, waits at most `window_s` for the other requests already
on their way (`expected`: the server's inference calls in flight) to
queue, up to `max_batch`, and runs them together with
`CloudExecutor.catch_up_many`, one read of the weights for all. A request
with no other in flight runs at once, so a lone client pays nothing for
batching. A failing batch fails each of its requests with the same
error; the next batch is unaffected.
"""

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures

from jaxexit import checks
from jaxexit.serve.cloud_exec import CatchUp, StepResult


class CatchUpBatcher:
  """Gathers `CatchUp` requests of concurrent callers into batches.

  Args:
    run_many: runs a list of ≤ `max_batch` requests, returning one
      `StepResult` each (`CloudExecutor.catch_up_many`).
    max_batch: most requests per batch (≥ 2).
    window_s: how long the oldest request waits for company, seconds.
    expected: how many requests are on their way, queued ones included
      (None: always wait the window for `max_batch`).
  """

  def __init__(
    self,
    run_many: Callable[[Sequence[CatchUp]], list[StepResult]],
    *,
    max_batch: int,
    window_s: float,
    expected: Callable[[], int] | None = None,
  ):
    checks.positive_int("max_batch", max_batch, minimum=2)
    checks.in_range("window_s", window_s, 0.0, 10.0)
    self._run_many, self.max_batch, self.window_s = (
      run_many,
      max_batch,
      window_s,
    )
    self._expected = expected or (lambda: max_batch)
    self._queue: list[tuple[CatchUp, futures.Future]] = []
    self._cv = threading.Condition()
    self._closed = False
    self.batch_sizes: dict[int, int] = {}  # Batch size -> batches run.
    self._worker = threading.Thread(
      target=self._serve, name="catch-up-batcher", daemon=True
    )
    self._worker.start()

  def __call__(self, request: CatchUp) -> StepResult:
    """Runs `request` in the next batch; blocks until it is done."""
    done = futures.Future()
    with self._cv:
      if self._closed:
        raise RuntimeError("the catch-up batcher is closed")
      self._queue.append((request, done))
      self._cv.notify_all()
    return done.result()

  def close(self) -> None:
    """Runs what is queued, then stops the worker."""
    with self._cv:
      self._closed = True
      self._cv.notify_all()
    self._worker.join()

  def _fail_all(self, error: BaseException) -> None:
    """Closes the batcher and fails every queued request with `error`."""
    with self._cv:
      self._closed = True
      queued, self._queue = self._queue, []
    for _, done in queued:
      done.set_exception(error)

  def _next_batch(self) -> list[tuple[CatchUp, futures.Future]]:
    with self._cv:
      while not self._queue and not self._closed:
        self._cv.wait()
      deadline = time.monotonic() + self.window_s
      while not self._closed and len(self._queue) < min(
        self.max_batch, self._expected()
      ):
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cv.wait(left)
      batch = self._queue[: self.max_batch]
      del self._queue[: self.max_batch]
      return batch

  def _serve(self) -> None:
    while True:
      try:
        batch = self._next_batch()
      except BaseException as e:  # A bug here must not strand the callers.
        self._fail_all(e)
        raise
      if not batch:
        return  # Closed and drained.
      self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
      try:
        results = self._run_many([request for request, _ in batch])
      except BaseException as e:  # Every waiting caller gets the error.
        for _, done in batch:
          done.set_exception(e)
        continue
      for (_, done), result in zip(batch, results):
        done.set_result(result)
