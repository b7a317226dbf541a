"""Data-parallel training over MPI: ``mpirun -n N python -m poppins train ...``.

Every rank reads the same bins, packs the same rows and walks the same (epoch, row) position.
A step's global batch is ``grad_accum`` micro-batches of ``batch_size`` rows (the TrainConfig
of a fresh run under N ranks has ``grad_accum`` multiplied by N, so each rank does the number
of micro-batches the user asked for).  Micro-batch ``m`` belongs to rank ``m % N``; in each
round every rank computes the gradient of its micro-batch, the gradients are gathered
(``Allgather``) and every rank adds them up **in micro-batch order** with the arithmetic of
``Model.backward(accumulate=True)`` (``total = g_m + total`` in float32).  So the summed
gradient, the loss, the AdamW step and the weights are those of one process running
``--grad-accum`` micro-batches one after another, bit for bit (at the same thread count per
rank), whatever N is: a run can be resumed with another number of ranks.

Rank 0 alone runs the data stage, reads the checkpoint (and sends it to the others), writes
the checkpoints, ``config.json``, the model file and the progress lines.

Without an MPI launcher (no ``OMPI_COMM_WORLD_SIZE`` / ``PMI_SIZE`` / ``MV2_COMM_WORLD_SIZE``
in the environment, or a world of one process) :func:`current_group` is :data:`SOLO` and
mpi4py is never imported.  A rank that dies ends the job: ``mpirun`` notices, names the rank
and stops the others; an error on one rank aborts the job (``MPI_Abort``) instead of leaving
the others waiting in a collective.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import PoppinsError, Problem

#: Environment variables by which MPI launchers announce the world size (Open MPI, MPICH /
#: Intel MPI / Slurm PMI, MVAPICH).  One of them > 1 means "data-parallel under MPI".
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """The number of ranks an MPI launcher started (1 when not under MPI)."""
    for var in LAUNCHER_SIZE_VARS:
        try:
            n = int(os.environ.get(var, "").strip() or 0)
        except ValueError:
            n = 0
        if n > 0:
            return n
    return 1


class ReportedByRoot(PoppinsError):
    """Rank 0's error, seen on another rank: rank 0 reports it, so nothing is printed here."""

    def __init__(self, message: str):
        super().__init__(message)
        self.problems = []


class Solo:
    """One process: every collective is the identity."""

    size = 1
    rank = 0
    local_size = 1
    is_root = True
    host = socket.gethostname()
    comm_seconds = 0.0

    def bcast(self, obj):
        return obj

    def allgather(self, obj) -> List[Any]:
        return [obj]

    def agree_stop(self, signame: Optional[str]) -> Optional[str]:
        return signame

    @contextmanager
    def guard(self):
        yield


SOLO = Solo()


class MPIGroup:
    """The ranks of ``MPI.COMM_WORLD`` (mpi4py imported here, and only here)."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise PoppinsError(
                f"started by an MPI launcher ({launched_size()} ranks) but mpi4py is not "
                f"installed ({exc}); install it with: pip install 'poppins[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)   # a lost peer ends the job
        self.size = self.comm.Get_size()
        self.rank = self.comm.Get_rank()
        self.is_root = self.rank == 0
        self.host = MPI.Get_processor_name()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()
        self.comm_seconds = 0.0   # time in the collectives of the steps (and waiting in them)
        self._bufs: Tuple = ()

    # -- small objects (pickled) ---------------------------------------------------------
    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj) -> List[Any]:
        return self.comm.allgather(obj)

    def agree_stop(self, signame: Optional[str]) -> Optional[str]:
        """The stop signal of the lowest rank that got one (every rank gets the same)."""
        t = time.perf_counter()
        names = self.allgather(signame)
        self.comm_seconds += time.perf_counter() - t
        return next((s for s in names if s), None)

    # -- the gradient step -----------------------------------------------------------------
    def _buffers(self, flat: np.ndarray):
        if not self._bufs or self._bufs[0].shape[1] != flat.size:
            self._bufs = (np.empty((self.size, flat.size), dtype=flat.dtype),
                          np.empty(flat.size, dtype=flat.dtype),
                          np.empty((self.size, 3), dtype=np.float64))
        return self._bufs

    def accumulate(self, model, packed, micro_rows) -> Tuple[float, int]:
        """Forward/backward of this rank's micro-batches of one step (micro-batch m on rank
        m % size), the gradients summed in micro-batch order into ``model.flat_grads`` on
        every rank.  Returns (sum of the micro-batch losses in order, real tokens)."""
        G, N = len(micro_rows), self.size
        recv, total, side_recv = self._buffers(model.flat_grads)
        side = np.zeros(3, dtype=np.float64)
        rounds = (G + N - 1) // N
        target = model.flat_grads if rounds == 1 else total
        loss_sum, real, first = 0.0, 0, True
        for k in range(rounds):
            m = k * N + self.rank
            side[:] = 0.0
            if m < G:
                b = packed.fill(micro_rows[m])
                side[0] = model.forward(b.tokens, b.targets, mask=b.mask, weights=b.weights,
                                        segments=b.segments)
                model.backward()
                side[1], side[2] = b.real_tokens, 1.0
            t = time.perf_counter()
            self.comm.Allgather(model.flat_grads, recv)
            self.comm.Allgather(side, side_recv)
            self.comm_seconds += time.perf_counter() - t
            for q in range(N):
                if not side_recv[q, 2]:
                    continue
                loss_sum += float(side_recv[q, 0])
                real += int(side_recv[q, 1])
                if first:
                    target[...] = recv[q]
                    first = False
                else:
                    np.add(target, recv[q], out=target)   # == g_m + total (IEEE: commutative)
        if target is not model.flat_grads:
            model.flat_grads[...] = target
        return loss_sum, real

    # -- errors --------------------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> None:
        sys.stderr.write(f"poppins: rank {self.rank} of {self.size} (host {self.host}): "
                         f"{message}; stopping all ranks\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    @contextmanager
    def guard(self):
        """An exception on one rank would leave the others waiting in a collective (and
        MPI_Finalize would wait for them): print it, then abort the whole job."""
        try:
            yield
        except ReportedByRoot:
            raise
        except PoppinsError as exc:
            self.abort("; ".join(str(p) for p in exc.problems) or str(exc), exc.exit_code)
        except KeyboardInterrupt:
            self.abort("interrupted", 130)
        except BaseException as exc:   # noqa: BLE001 - any failure must end every rank
            if isinstance(exc, SystemExit) and not exc.code:
                raise
            traceback.print_exc()
            self.abort(f"{type(exc).__name__}: {exc}")


_GROUP = None


def current_group():
    """:data:`SOLO`, or the MPI world when an MPI launcher started more than one rank."""
    global _GROUP
    if _GROUP is None:
        _GROUP = SOLO if launched_size() <= 1 else MPIGroup()
        if _GROUP.size <= 1:
            _GROUP = SOLO
    return _GROUP


def on_root(group, work):
    """``work()`` on rank 0, its result sent to every rank; rank 0's PoppinsError is raised
    on every rank (printed by rank 0 only)."""
    if group.size == 1:
        return work()
    if group.is_root:
        try:
            result = work()
        except PoppinsError as exc:
            group.bcast(("error", str(exc)))
            raise
        except BaseException as exc:
            group.bcast(("error", f"rank 0 failed: {type(exc).__name__}: {exc}"))
            raise
        return group.bcast(("ok", result))[1]
    status, payload = group.bcast(None)
    if status == "error":
        raise ReportedByRoot(payload)
    return payload


def all_ok(group, problem: Optional[str]) -> None:
    """Every rank says whether it can go on (``problem`` None) and all stop together if one
    cannot: rank 0 raises every rank's problem, the others raise quietly."""
    problems = group.allgather(problem)
    bad = [Problem(None, None, f"rank {r}: {p}") for r, p in enumerate(problems) if p]
    if not bad:
        return
    if group.is_root:
        raise PoppinsError(bad)
    raise ReportedByRoot("; ".join(p.message for p in bad))
