"""Rank 0's side of the worker processes: start them, watch them, stop them.

Workers start from a fork server that has imported torch (CUDA cannot be forked from a process
that uses it, so never from rank 0; importing torch in every worker took seconds). They are
daemonic and get two pipes each: commands (rank 0 -> worker) and reports (worker -> rank 0:
"joining", "ready", or an error's traceback). Rank 0 opens a `TCPStore` on a free port for the
rendezvous.

After start-up a monitor thread watches the report pipes and the processes. When a worker
fails or exits on its own, it records why (`failure`) and stops the others, so that rank 0,
if it waits inside a collective, gets an error at once instead of waiting forever (gloo sees
the connections close; NCCL's communicator is aborted). `stop()` asks politely, then
terminates, then kills: nothing outlives it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mili.distributed import step, worker
from mili.distributed.failure import TensorParallelFailure

log = logging.getLogger("mili.distributed")

STOP_GRACE_S = 5.0  # a worker told to stop gets this long before SIGTERM, then as long again before SIGKILL


class WorkerGroup:
    """Ranks 1 .. size-1 as processes, seen from rank 0."""

    def __init__(self, spec: worker.WorkerSpec):
        ctx = worker_context()
        self.processes, self.commands, self.reports = [], [], []
        self.failure: str | None = None
        self._stopping = False
        self._failed = threading.Event()
        for rank in range(1, spec.size):
            command_out, command_in = ctx.Pipe(duplex=False)
            report_out, report_in = ctx.Pipe(duplex=False)
            process = ctx.Process(target=worker.main, args=(rank, spec, command_out, report_in),
                                  name=f"mili-tp-rank{rank}", daemon=True)
            process.start()
            command_out.close()  # the worker holds these ends now; ours would hide its end-of-file
            report_in.close()
            self.processes.append(process)
            self.commands.append(command_in)
            self.reports.append(report_out)

    def wait_for(self, state: str) -> None:
        """Block until every worker reports `state` ("joining", "ready"); a worker that fails or
        exits first raises TensorParallelFailure (the others are stopped)."""
        pending = dict(enumerate(self.reports, start=1))
        while pending:
            sentinels = {self.processes[rank - 1].sentinel: rank for rank in pending}
            for ready in wait([*pending.values(), *sentinels]):
                rank = sentinels.get(ready) or next(r for r, conn in pending.items() if conn is ready)
                if rank not in pending:
                    continue
                message = _receive(pending[rank])
                if message is not None and message[0] == state:
                    del pending[rank]
                    continue
                self._fail(rank, message)
                self.stop()
                raise TensorParallelFailure(self.failure)

    def watch(self) -> None:
        """From now on a monitor thread owns the report pipes (see the module docstring)."""
        threading.Thread(target=self._monitor, name="mili-tp-monitor", daemon=True).start()

    def _monitor(self) -> None:
        by_object = {}
        for rank, (process, conn) in enumerate(zip(self.processes, self.reports), start=1):
            by_object[process.sentinel] = by_object[conn] = rank
        while by_object and not self._stopping:
            ready = wait(list(by_object))
            if self._stopping:
                return
            rank = by_object[ready[0]]
            message = _receive(self.reports[rank - 1]) if self.reports[rank - 1] in ready else None
            self._fail(rank, message)
            self._terminate_all()
            worker.abort_nccl_group()
            return

    def _fail(self, rank: int, message) -> None:
        if self.failure is not None:
            return
        if message is not None and message[0] == "error":
            self.failure = f"tensor-parallel rank {rank} failed:\n{message[1]}"
        else:
            process = self.processes[rank - 1]
            process.join(timeout=1.0)
            self.failure = f"tensor-parallel rank {rank} {_exit_reason(process.exitcode)}"
        # said at once, in one line (the engine raises the whole message at its next step): on GPUs
        # rank 0 may wait in an all-reduce until the kernel's watchdog aborts it, and NCCL may then
        # end the process before the engine can raise
        log.error("%s", self.failure.splitlines()[0].rstrip(":"))
        self._failed.set()

    def wait_for_failure(self, timeout: float) -> str | None:
        """The recorded failure, waiting up to `timeout` s for the monitor to see one."""
        self._failed.wait(timeout)
        return self.failure

    def send(self, message: tuple) -> None:
        for conn in self.commands:
            conn.send(message)

    def stop(self, polite: bool = True) -> None:
        """Stop every worker: "shutdown" (if polite: workers between steps), then SIGTERM, then
        SIGKILL. Safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        if polite:
            for conn in self.commands:
                try:
                    conn.send((step.SHUTDOWN,))
                except OSError:
                    pass  # already gone
            deadline = time.monotonic() + STOP_GRACE_S
            for process in self.processes:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
        self._terminate_all()
        for conn in (*self.commands, *self.reports):
            conn.close()

    def _terminate_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def worker_context():
    """Where worker processes come from: a fork server that has imported torch (else spawn)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # torch._dynamo: building a model on the meta device imports it (seconds). Not mili: a worker
    # imports mili's code as it is when the worker starts.
    ctx.set_forkserver_preload(["torch", "torch._dynamo"])
    return ctx


def _receive(conn):
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def start_store(size: int) -> dist.TCPStore:
    """The rendezvous, served by rank 0 on a free port of this host."""
    return dist.TCPStore("127.0.0.1", 0, size, is_master=True, wait_for_workers=False)


def check_devices(device: torch.device, size: int) -> None:
    if device.type == "cuda":
        first = device.index or 0
        if first + size > torch.cuda.device_count():
            raise ValueError(f"tensor_parallel_size={size} from {device} needs GPUs {first}..{first + size - 1}, "
                             f"but this host has {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise ValueError(f"tensor parallelism runs on CUDA (NCCL) or the CPU (gloo), not on {device}")
