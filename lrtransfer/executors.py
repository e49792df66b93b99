"""Where sweep runs execute: the sweep process, one worker process per device slot, or SLURM jobs.

Every run goes through `execute_run`, which takes the run's file lock, skips a finished run, calls the
trainer and makes sure `result.json` exists afterwards. The lock is held by the process that trains, so
two sweep processes (or a sweep and a SLURM job of an older sweep) never train the same run at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lrtransfer.utils import atomic_write_json, atomic_write_yaml

BUSY = "busy"  # execute_run's answer when another process holds the run's lock
FINAL = ("ok", "diverged")  # a run with one of these results is never trained again
Trainer = Callable[[dict[str, Any]], dict[str, Any]]


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's result.json, or None when it has not finished (or the file is unreadable)."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def is_finished(result: dict[str, Any] | None, config: dict[str, Any]) -> bool:
    """Whether a stored result already answers `config`: final, or a trunk stopped at or past its stop.

    A trunk is extended by calling the trainer again with a later `stop_at_step`: it resumes from the
    checkpoint where it stopped (the trainer keeps the checkpoint at every stop).
    """
    if result is None:
        return False
    if result.get("status") in FINAL:
        return True
    stop = config.get("stop_at_step")
    return result.get("status") == "stopped" and stop is not None and int(result.get("steps") or 0) >= stop


def resolve_trainer(trainer: Trainer | str) -> Trainer:
    """A trainer is a callable(config dict) -> result dict, or its import path "module:function"."""
    if callable(trainer):
        return trainer
    module, sep, name = str(trainer).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"trainer={trainer!r} is invalid; allowed values: an import path 'module:function'")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"trainer={trainer!r}: {module} has no callable {name!r}")
    return fn


def lock_is_free(lock_path: str | os.PathLike) -> bool:
    """Probe a run's lock without keeping it (the worker takes it for real)."""
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def execute_run(
    config: dict[str, Any],
    lock_path: str,
    trainer: Trainer | str,
    num_processes: int = 1,
    accelerate_config: str | None = None,
) -> dict[str, Any]:
    """Train one run under its lock and return its result; a training error becomes status "failed".

    Returns {"status": "busy"} at once when another process holds the lock. A finished run (see
    `is_finished`) is returned as is, never retrained. An interrupted run resumes, because the
    trainer is called with resume="auto" on the same folder.
    """
    run_dir = Path(config["output_dir"])
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return {"status": BUSY}
    try:
        previous = read_result(run_dir)
        if is_finished(previous, config):
            return previous
        start = time.time()
        try:
            if num_processes > 1:
                result = _accelerate_launch(config, num_processes, accelerate_config)
            else:
                result = resolve_trainer(trainer)(dict(config))
        except Exception as e:  # a crashing run is data for this pass; the sweep goes on
            stored = read_result(run_dir)  # the trainer's own record of the failure, when it wrote one
            fresh = stored is not None and stored != previous and stored.get("status") == "failed"
            result = stored if fresh else {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        if not isinstance(result, dict) or "status" not in result:
            result = {"status": "failed", "error": f"trainer returned {type(result).__name__}, not a result dict"}
        result.setdefault("wall_time_s", time.time() - start)
        stored = read_result(run_dir)
        if stored is None or stored == previous:  # the trainer wrote nothing for this call
            atomic_write_json(run_dir / "result.json", result)
        return result
    finally:
        lock.release()


def _accelerate_launch(config: dict[str, Any], num_processes: int, accelerate_config: str | None) -> dict[str, Any]:
    """Multi-GPU run: `accelerate launch -m lrtransfer.cli train --config <run>.yaml`, then read result.json."""
    run_dir = Path(config["output_dir"])
    launch_yaml = run_dir.parent.parent / "launch" / f"{run_dir.name}.yaml"
    atomic_write_yaml(launch_yaml, {k: v for k, v in config.items() if v is not None})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config:
        from lrtransfer.train import resolve_accelerate_config  # bare names: accelerate_configs/<name>.yaml

        cmd += ["--config_file", str(resolve_accelerate_config(accelerate_config))]
    cmd += ["-m", "lrtransfer.cli", "train", "--config", str(launch_yaml)]
    proc = subprocess.run(cmd, check=False)
    result = read_result(run_dir)
    if result is None:
        result = {"status": "failed", "error": f"accelerate launch exited with {proc.returncode} and no result.json"}
    return result


class InlineExecutor:
    """Runs each job in the sweep process itself: one slot, no process start-up cost."""

    def __init__(self) -> None:
        self.slots = 1

    def free_slots(self, running: int) -> int:
        return self.slots - running

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return [h for h in handles if h.done()]

    def close(self) -> None:
        pass


def _init_slot(device: str, threads: int) -> None:
    """Worker start-up: pin the slot to its device before anything touches CUDA, and split CPU threads."""
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class LocalExecutor:
    """One long-lived worker process per slot; a slot is a (device, index) pair.

    Slots are `devices × runs_per_device` GPUs, capped at `max_parallel`: one run per GPU or several tiny
    runs per GPU; on CPU, `max_parallel` runs with the cores split between them. A slot keeps its process (imports
    are paid once); a crashed worker's slot gets a fresh process. Workers are spawned by default (safe
    with CUDA and OpenMP); "fork" starts CPU workers without re-importing torch.
    """

    def __init__(
        self, devices: Sequence[str], runs_per_device: int, max_parallel: int, start_method: str = "spawn"
    ) -> None:
        per_device = max_parallel if list(devices) == ["cpu"] else runs_per_device  # CPU: the cores are split
        slots = [d for d in devices for _ in range(per_device)][:max_parallel]
        if not slots:
            raise ValueError("the local executor has no slots; set devices and runs_per_device >= 1")
        cpu_slots = sum(d == "cpu" for d in slots)
        self.threads = max(1, (os.cpu_count() or 1) // max(1, cpu_slots)) if cpu_slots else 1
        self.devices = slots
        self.start_method = start_method
        self.slots = len(slots)
        self._pools: list[cf.ProcessPoolExecutor | None] = [None] * self.slots
        self._free = list(range(self.slots))
        self._cond = threading.Condition()

    def free_slots(self, running: int) -> int:
        return self.slots - running

    def _pool(self, i: int) -> cf.ProcessPoolExecutor:
        if self._pools[i] is None:
            self._pools[i] = cf.ProcessPoolExecutor(
                max_workers=1,
                mp_context=mp.get_context(self.start_method),
                initializer=_init_slot,
                initargs=(self.devices[i], self.threads),
            )
        return self._pools[i]

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        with self._cond:  # a finished job's slot comes back in its done-callback, just after wait() sees it
            self._cond.wait_for(lambda: bool(self._free))
            i = self._free.pop(0)
        future = self._pool(i).submit(fn, *args)

        def release(f: cf.Future, i: int = i) -> None:
            if isinstance(f.exception(), cf.process.BrokenProcessPool):
                self._pools[i] = None  # the worker died (segfault, OOM kill): next job gets a new one
            with self._cond:
                self._free.append(i)
                self._cond.notify()

        future.add_done_callback(release)
        return future

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def close(self) -> None:
        for pool in self._pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class SlurmExecutor:
    """Each run is a `submitit` job (SLURM, or submitit's local/debug executors for tests).

    A run with `gpus_per_run > 1` is started inside its job by `accelerate launch`, one process per GPU.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        cluster: str | None,
        max_parallel: int,
        timeout_min: int,
        gpus_per_run: int,
        cpus_per_run: int,
        mem_gb: int | None,
        partition: str | None,
        account: str | None,
        poll_s: float = 1.0,
    ) -> None:
        import submitit

        self.slots = max_parallel
        self.poll_s = poll_s
        self._executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict[str, Any] = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_run, "name": "lrtransfer"}
        if gpus_per_run:
            params["gpus_per_node"] = gpus_per_run
        if mem_gb:
            params["mem_gb"] = mem_gb
        if self._executor.cluster == "slurm":
            if partition:
                params["slurm_partition"] = partition
            if account:
                params["slurm_account"] = account
        self._executor.update_parameters(**params)

    def free_slots(self, running: int) -> int:
        return self.slots - running

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args)

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.time() + timeout
        while True:
            done = [h for h in handles if h.done()]
            if done or time.time() >= deadline:
                return done
            time.sleep(min(self.poll_s, max(0.0, deadline - time.time())))

    def close(self) -> None:
        pass
