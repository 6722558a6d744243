"""Where per-item work runs (config `engine`): a process pool on this host, or a Dask cluster (a
local one, or a running scheduler named in config) to go past one host.

`ordered_map` streams: it takes items from an iterator, keeps at most `in_flight` of them
submitted, and yields results in input order, so memory stays flat however long the input is and
the output is the same whichever engine or worker finished first. The work function receives a
`context` that each worker process builds once (a detector, say) from a picklable `spec`.

On a real cluster every worker needs this package installed and the data and output folders at
the same paths (a shared file system), as with any Dask deployment.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing as mp
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from facemask.config import Engine
from facemask.errors import FacemaskError

log = logging.getLogger("facemask.compute")


class EngineError(FacemaskError):
    """The compute engine could not be started or reached."""


ONE_THREAD = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}

# One context per worker process, built on first use from the spec the run sent (keyed by run).
_context: dict[str, Any] = {}


def _run_shared(shared: tuple[str, Callable, Any, Callable], batch: list) -> list:
    return _run_batch(*shared, batch)


def _run_batch(run: str, build: Callable[[Any], Any], spec: Any, work: Callable, batch: list) -> list:
    if _context.get("run") != run:  # a new run on a long-lived worker: rebuild
        _context.clear()
        _context.update(run=run, value=build(spec))
    return [work(_context["value"], item) for item in batch]


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(
    work: Callable[[Any, Any], Any],
    items: Iterable,
    build: Callable[[Any], Any],
    spec: Any,
    workers: int,
    engine: Engine,
) -> Iterator[Any]:
    """`work(context, item)` for every item, in order, on `workers` processes of `engine`
    (in this process when `workers` is 1 and no scheduler is named); `context = build(spec)` once
    per process. A failing item raises its exception here."""
    run = uuid.uuid4().hex
    batches = _batches(items, engine.batch)
    if engine.in_process(workers):  # nothing to spread over: no cluster, no pool
        context = build(spec)
        for batch in batches:
            yield from (work(context, item) for item in batch)
        return
    submit, share, close = (_dask if engine.kind == "dask" else _pool)(engine, workers)
    pending: collections.deque = collections.deque()
    try:
        shared = share((run, build, spec, work))  # sent to the workers once, not with every task
        for batch in batches:
            pending.append(submit(_run_shared, shared, batch))
            if len(pending) >= engine.in_flight:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        close()


def _dask(engine: Engine, workers: int) -> tuple[Callable, Callable, Callable]:
    import dask
    from distributed import Client, LocalCluster

    stack = contextlib.ExitStack()
    # The in-process scheduler logs each worker's closed connection at shutdown as an INFO line with a
    # CommClosedError traceback: read as a failure in a successful stage's log. Warnings and errors stay.
    quiet = logging.getLogger("distributed")
    stack.callback(quiet.setLevel, quiet.level)
    quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, and setting it freezes glibc's
    # mmap threshold at 128 KiB: every decoded image is then mmapped, page-faulted in and unmapped
    # again. Local workers start with glibc's defaults, as the pool's do, one thread each; and
    # without the profiler sampling their stacks. (Measured on 2 cores: 39 -> 55 images/s.)
    settings = {"distributed.nanny.pre-spawn-environ": ONE_THREAD, "distributed.worker.profile.enabled": False}
    stack.enter_context(dask.config.set(settings))
    try:
        if engine.scheduler:
            client = stack.enter_context(Client(engine.scheduler, timeout=f"{engine.connect_timeout_s}s"))
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.WARNING,
                )
            )  # fmt: skip
            # results straight from the workers, not relayed by the scheduler (55 -> 59 images/s)
            client = stack.enter_context(Client(cluster, direct_to_workers=True))
    except OSError as err:  # timeouts included
        stack.close()
        raise EngineError(f"cannot reach the Dask scheduler {engine.scheduler or '(local)'}: {err}") from err
    log.info("dask: %d workers (%s)", len(client.scheduler_info()["workers"]), engine.scheduler or "local cluster")

    def submit(fn: Callable, *args: Any):
        return client.submit(fn, *args, pure=False)

    def share(value: Any):
        return client.scatter(value, broadcast=True, hash=False)

    return submit, share, stack.close


def _pool(engine: Engine, workers: int) -> tuple[Callable, Callable, Callable]:
    pool = mp.get_context("spawn").Pool(workers)

    class _Result:  # the pool's AsyncResult with the Future calls ordered_map uses
        def __init__(self, async_result) -> None:
            self._r = async_result

        def result(self) -> Any:
            return self._r.get()

        def cancel(self) -> None:
            pass

    def submit(fn: Callable, *args: Any) -> _Result:
        return _Result(pool.apply_async(fn, args))

    def close() -> None:
        pool.terminate()
        pool.join()

    return submit, (lambda value: value), close
