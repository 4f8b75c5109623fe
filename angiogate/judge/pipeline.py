"""Judging many clips at once: prepare in parallel, classify in batches.

Preparing a clip (`Judge.prepare`: header, rules, decoding the sampled
frames, preprocessing) is decoder, numpy and OpenCV work that releases the
GIL, so a few threads overlap it across cores. The classifier then runs once
per batch of prepared clips in the caller's thread, while the threads
prepare the next clips.

`ClipPipeline` is the machinery the judge worker (clips from the durable
queue) and `angiogate score` (files) share:

* `room()` says how many clips may be added now: enough that each thread
  has the clip it works on and one to go on with while the model runs
  (`2 x decode_threads` not yet prepared), and never more than
  `2 x decode_threads + judge_batch` held in all (being prepared, or prepared
  and waiting for a batch). So a caller claims little ahead of the work, and
  the memory held is bounded: besides the batch being classified, at most
  that many model inputs (3 x T x S x S float32, 4.9 MB at 16 x 160 x 160)
  and one set of decoded frames per thread.
* `next_batch()` waits for the oldest clip only, then adds the clips behind
  it that are already prepared, up to `judge_batch`: it never waits for more
  clips to fill a batch, so a lone clip is classified as soon as it is ready.
  A batch is in submission order and holds clips prepared for one engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from angiogate.dicom.header import ClipHeader
from angiogate.judge.verdict import Judge, Judgement, PreparedClip


@dataclass(frozen=True)
class Judged:
    """One judged clip: what the caller submitted it as (`tag`), its header if readable, the judgement."""
    tag: Any
    header: ClipHeader | None
    judgement: Judgement


class ClipPipeline:
    """Parallel preparation and batched classification of clips, in submission order.

    Used from one thread (the caller's); only `Judge.prepare` runs in the pool.
    """

    def __init__(self, judge: Judge, *, decode_threads: int, judge_batch: int):
        if decode_threads < 1 or judge_batch < 1:
            raise ValueError("decode_threads and judge_batch must be at least 1")
        self.judge = judge
        self.decode_threads, self.judge_batch = decode_threads, judge_batch
        self.capacity = 2 * decode_threads + judge_batch
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="judge-prepare")
        self._queue: deque[tuple[Any, Future]] = deque()

    def __len__(self) -> int:
        """Clips submitted and not yet taken into a batch."""
        return len(self._queue)

    def prepared(self) -> int:
        """Clips at the head of the queue that are prepared (what a batch could take now)."""
        count = 0
        for _, future in self._queue:
            if not future.done():
                break
            count += 1
        return count

    def room(self) -> int:
        """How many clips may be submitted now."""
        unprepared = sum(1 for _, future in self._queue if not future.done())
        return max(0, min(2 * self.decode_threads - unprepared, self.capacity - len(self._queue)))

    def submit(self, tag: Any, path: Path, **prepare_options) -> None:
        """Start preparing the clip at `path` (options go to `Judge.prepare`) for the engine
        serving now: clips submitted after a model swap are judged by the new model."""
        engine = self.judge.engine  # read here, not in the thread: submission order is swap order
        self._queue.append((tag, self._pool.submit(self.judge.prepare, path, engine=engine, **prepare_options)))

    def add_judged(self, tag: Any, judgement: Judgement, header: ClipHeader | None = None) -> None:
        """A clip judged without preparation (it keeps its place in the order)."""
        future: Future = Future()
        future.set_result(PreparedClip.finished(judgement, header))
        self._queue.append((tag, future))

    def next_batch(self, timeout: float | None = None) -> list[tuple[Any, PreparedClip]] | None:
        """The oldest clip and the prepared clips right behind it; None if the oldest
        is not ready within `timeout` seconds; [] when nothing is submitted."""
        if not self._queue:
            return []
        done, _ = wait([self._queue[0][1]], timeout=timeout)
        if not done:
            return None
        batch: list[tuple[Any, PreparedClip]] = []
        engine = None
        while self._queue and len(batch) < self.judge_batch and self._queue[0][1].done():
            prepared = self._queue[0][1].result()  # Judge.prepare never raises
            if prepared.needs_model:
                if engine is None:
                    engine = prepared.engine
                elif prepared.engine is not engine:
                    break  # prepared for a model swapped in meanwhile: next batch
            batch.append((self._queue.popleft()[0], prepared))
        return batch

    def classify(self, batch: list[tuple[Any, PreparedClip]]) -> list[Judged]:
        """Judge a batch from `next_batch` (one model call for its clips that need one)."""
        judgements = self.judge.classify([prepared for _, prepared in batch])
        return [Judged(tag, prepared.header, judgement)
                for (tag, prepared), judgement in zip(batch, judgements)]

    def close(self) -> None:
        """Forget what is queued; threads finish the clip they are on, then end."""
        self._queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def judge_files(judge: Judge, paths: Iterable[Path], *, decode_threads: int,
                judge_batch: int) -> Iterator[Judged]:
    """Judge files through a `ClipPipeline`; yields one `Judged` per path (tag: the path),
    in input order. A file that cannot be judged yields an `error`, never an exception."""
    pipeline = ClipPipeline(judge, decode_threads=decode_threads, judge_batch=judge_batch)
    remaining = iter(paths)
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and pipeline.room():
            path = next(remaining, None)
            if path is None:
                exhausted = True
            else:
                pipeline.submit(path, path)

    try:
        while True:
            fill()
            if not len(pipeline):
                return
            batch = pipeline.next_batch()
            fill()  # the threads prepare the next clips while the model runs
            yield from pipeline.classify(batch)
    finally:
        pipeline.close()
