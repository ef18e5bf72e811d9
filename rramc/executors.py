"""Where independent tasks run: here one after another, in a pool of local processes, or on Ray.

A sweep's grid points (and the paper experiment's) are independent: each compiles, retrains if
asked, runs and returns its row. An :class:`Executor` takes a module-level ``function``, the
``shared`` object every task reads (the model and the data sets: sent once per worker, or once to
the cluster's object store, not once per task) and the tasks' ``(key, item)`` pairs, and yields an
:class:`Outcome` per task as it finishes. A task that raises gives an outcome with its error and
does not stop the others; a worker that dies fails the tasks it held, and the others go on.

* ``local``: in this process, one task after another (the default; nothing to set up).
* ``processes``: the standard library's process pool on this machine (``--jobs N``). Workers are
  spawned, not forked (torch's threads do not survive a fork), and share the cores: each gets
  ``cores // jobs`` torch threads.
* ``ray``: Ray tasks (``pip install 'rramc[ray]'``) on a local Ray started on the fly, or on the
  cluster at ``--address``. Each task asks for one CPU, and one GPU when the tasks run on CUDA.
"""

from __future__ import annotations

import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rramc.errors import RramcError

Task = Callable[[Any, Any], Any]
"""``function(shared, item) -> value``: a module-level function, so that workers can import it."""

Events = Callable[[str, str], None]
"""``on_event(kind, key)``: kind is ``started``, ``finished`` or ``failed``."""


@dataclass
class Outcome:
    """What one task gave: its ``value``, or the ``error`` it raised (a one-line description)."""

    key: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def call(function: Task, shared: Any, key: str, item: Any) -> Outcome:
    """Run one task and catch what it raises: a failing task must not stop the others."""
    start = time.perf_counter()
    try:
        value = function(shared, item)
    except RramcError as exc:
        return Outcome(key, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # a task's own failure, whatever it is, is reported with where it arose
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return Outcome(key, error=f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})",
                       seconds=time.perf_counter() - start)
    return Outcome(key, value=value, seconds=time.perf_counter() - start)


class Executor(ABC):
    """Base of executors; ``name`` is the value of ``--executor``."""

    name: ClassVar[str]
    workers: int = 1

    @abstractmethod
    def run(self, function: Task, shared: Any, items: Sequence[tuple[str, Any]], on_event: Events | None = None) -> Iterator[Outcome]:
        """Yield an :class:`Outcome` for every ``(key, item)`` as its task finishes (in any order)."""

    def close(self) -> None:
        """Release what the executor started (a pool, a local Ray)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """In this process, one task after another."""

    name = "local"

    def run(self, function: Task, shared: Any, items: Sequence[tuple[str, Any]], on_event: Events | None = None) -> Iterator[Outcome]:
        for key, item in items:
            if on_event:
                on_event("started", key)
            outcome = call(function, shared, key, item)
            if on_event:
                on_event("finished" if outcome.ok else "failed", key)
            yield outcome


_worker: dict[str, Any] = {}  # a pool worker's function and shared object, set once by _start_worker


def _start_worker(function: Task, shared: Any, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker.update(function=function, shared=shared)


def _work(key: str, item: Any) -> Outcome:
    return call(_worker["function"], _worker["shared"], key, item)


class ProcessExecutor(Executor):
    """A pool of ``jobs`` spawned processes on this machine (``concurrent.futures``)."""

    name = "processes"

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise RramcError(f"--jobs {jobs}: need at least 1 worker process")
        self.workers = jobs

    def run(self, function: Task, shared: Any, items: Sequence[tuple[str, Any]], on_event: Events | None = None) -> Iterator[Outcome]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pending = list(items)
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                 initargs=(function, shared, threads)) as pool:
            running: dict[Any, str] = {}

            def submit() -> None:  # keep as many tasks in flight as there are workers, so "running" means running
                while pending and len(running) < self.workers:
                    key, item = pending.pop(0)
                    running[pool.submit(_work, key, item)] = key
                    if on_event:
                        on_event("started", key)

            submit()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    key = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as exc:  # a worker died (killed, out of memory): its tasks fail, not the sweep
                        broken = True
                        outcome = Outcome(key, error=f"a worker process died ({exc or 'no reason given'})")
                    if on_event:
                        on_event("finished" if outcome.ok else "failed", key)
                    yield outcome
                if broken:  # the pool is unusable once a worker died: what is left fails too, and --resume retries it
                    lost = [*running.values(), *(key for key, _ in pending)]
                    running.clear()
                    pending.clear()
                    for key in lost:
                        if on_event:
                            on_event("failed", key)
                        yield Outcome(key, error="not finished: a worker process died")
                    return
                submit()


def _ray_task(function: Task, shared: Any, key: str, item: Any) -> Outcome:
    return call(function, shared, key, item)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a ``host:port`` (or ``ray://host:port``) nothing listens on: Ray itself retries
    for minutes before it gives up. ``auto`` and other forms are left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise RramcError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                         "'ray start --head' and give its address, or leave --address out to start a local Ray") from None


class RayExecutor(Executor):
    """Ray tasks on the cluster at ``address``, or on a local Ray started on the fly (``jobs`` CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None, gpus_per_task: float = 0) -> None:
        if jobs is not None and jobs < 1:
            raise RramcError(f"--jobs {jobs}: need at least 1 CPU for the local Ray")
        try:
            import ray
        except ImportError:
            raise RramcError("--executor ray needs Ray, an optional dependency: pip install 'rramc[ray]' (or pip install ray)") from None
        self._ray, self.gpus_per_task = ray, gpus_per_task
        self._started = not ray.is_initialized()
        if self._started and address:
            _check_reachable(address)
        if self._started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types for the same failure
                raise RramcError(f"--executor ray{' --address ' + address if address else ''}: cannot start or reach Ray: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        try:
            self.workers = int(ray.cluster_resources().get("CPU", 1))
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus_per_task and gpus < gpus_per_task:
                raise RramcError(f"--device cuda on Ray: the cluster has {gpus:g} GPUs; each task needs {gpus_per_task:g}. "
                                 "Run on a cluster with GPUs, or use --device cpu")
            self.check_workers()
        except BaseException:
            self.close()
            raise

    def check_workers(self, distribution: str = "rramc", timeout: float = 120.0) -> None:
        """Refuse a cluster whose workers lack ``distribution`` or have another version of it: their tasks
        would all fail to load, or return rows another version computed."""
        from importlib import metadata

        ray = self._ray
        probe = ray.remote(num_cpus=0, max_retries=0)(metadata.version)  # a standard-library function: loads anywhere
        try:
            there = ray.get(probe.remote(distribution), timeout=timeout)
        except Exception as exc:
            text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RramcError(f"--executor ray: the cluster's workers cannot find {distribution} ({text}); install it on every "
                             f"node (pip install '{distribution}[ray]'), or start Ray with a runtime_env that provides it") from None
        here = metadata.version(distribution)
        if there != here:
            raise RramcError(f"--executor ray: the cluster's workers have {distribution} {there}, this machine {here}; "
                             "install the same version on every node, so that every point is computed alike")

    def run(self, function: Task, shared: Any, items: Sequence[tuple[str, Any]], on_event: Events | None = None) -> Iterator[Outcome]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_task, max_retries=0)(_ray_task)
        shared_ref = ray.put(shared)  # the model and the data travel to the object store once, not per task
        refs = {}
        for key, item in items:
            refs[remote.remote(function, shared_ref, key, item)] = key
            if on_event:
                on_event("started", key)
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                key = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's worker died, or it could not be deserialised there
                    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    hint = (" — is rramc installed on the cluster's nodes (pip install rramc, or a runtime_env)?"
                            if "No module named 'rramc" in str(exc) else "")
                    outcome = Outcome(key, error=f"the Ray task failed: {type(exc).__name__}: {text}{hint}")
                if on_event:
                    on_event("finished" if outcome.ok else "failed", key)
                yield outcome

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


EXECUTORS = ("local", "processes", "ray")


def check_executor_options(name: str, jobs: int | None = None, address: str | None = None) -> None:
    """Refuse an executor name, a worker count or an address that do not go together, before any work."""
    if name not in EXECUTORS:
        raise RramcError(f"--executor {name!r}: unknown; choose from {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise RramcError(f"--jobs {jobs}: need at least 1")
    if name == "local" and jobs is not None:
        raise RramcError("--jobs is for --executor processes or ray; local runs one point after another")
    if address is not None and name != "ray":
        raise RramcError("--address is for --executor ray")


def gpus_per_task(executor: str, device: str) -> float:
    """GPUs a task asks of the executor: one per Ray task on a CUDA device (local pools share this machine's)."""
    return 1 if executor == "ray" and device.startswith("cuda") else 0


def make_executor(name: str, *, jobs: int | None = None, address: str | None = None, gpus_per_task: float = 0) -> Executor:
    """The executor ``name`` (see :data:`EXECUTORS`); ``jobs``: worker processes (processes) or CPUs of a local Ray."""
    check_executor_options(name, jobs, address)
    if name == "local":
        return LocalExecutor()
    if name == "processes":
        return ProcessExecutor(jobs if jobs is not None else (os.cpu_count() or 1))
    return RayExecutor(address, jobs, gpus_per_task)
