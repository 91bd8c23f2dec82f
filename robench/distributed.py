"""Running one command as G cooperating processes under `torchrun` (training with DDP, sharded eval).

`torchrun --nproc-per-node G -m robench ...` starts G copies of the command with WORLD_SIZE, RANK
and LOCAL_RANK set. `session()` joins them into a process group (NCCL for GPUs, gloo on CPU) and
yields a `World`; outside torchrun it yields a one-process World whose helpers just call through,
so library code is written once.

The rule that keeps a bad input from hanging G processes: every step that can fail on one rank
only (a file missing on one machine, an unwritable folder seen by rank 0) runs inside `agree`,
`on_main` or `collect`, which exchange the outcome before anything else happens, so every rank
raises the same one-line RobenchError (or, for a bug, the failing rank shows its traceback and the
others a one-line pointer to it). Objects (errors, plans, per-example results) travel over a gloo
group on the CPU even when gradients use NCCL, and every collective has a timeout
(ROBENCH_DIST_TIMEOUT seconds, default 600), so a process that dies or stalls ends the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import torch
from torch import nn

from .devices import resolve_device
from .errors import RobenchError

T = TypeVar("T")
TIMEOUT_ENV = "ROBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
_active: "World | None" = None  # the World of the session in progress (sessions nest: reproduce -> train)
# The gloo group for objects. Kept here, not in World: a World in a traceback that outlives the session
# would keep the group alive until interpreter teardown, where destroying it can abort the process.
_group: Any = None


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one command.

    Args:
        rank: this process's index, 0 .. size - 1 (rank 0 writes files and draws progress).
        size: number of processes (1 outside torchrun).
        local_rank: index on this machine; picks the GPU cuda:LOCAL_RANK.
        device: where this process computes.
        launched: started by torchrun, with a process group (even of size 1).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched

    def agree(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; if it fails on any rank, raise that failure on all of them."""
        if not self.distributed:
            return fn()
        value, error, exc = _attempt(fn, self.rank)
        errors = self._collective(_all_gather, error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
        if not failed:
            return value
        first, message = failed[0]
        if first != 0 and len(failed) < self.size and not message.startswith("rank "):  # rank-local: say where
            message = f"{message} (on rank {first} of {self.size})"
        _raise(exc, message)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only (writing files, reading the CSV) and give its result to every rank."""
        if not self.distributed:
            return fn()
        value, error, exc = _attempt(fn, self.rank) if self.is_main else (None, None, None)
        error, value = self._collective(_broadcast, (error, value if error is None else None))
        if error is not None:
            _raise(exc, error)
        return value

    def collect(self, local: Any, fn: Callable[[list], T]) -> T:
        """Gather every rank's `local` to rank 0 (in rank order), run `fn(parts)` there, share its result."""
        if not self.distributed:
            return fn([local])
        parts = self._collective(_gather, local)
        return self.on_main(lambda: fn(parts))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks, on the CPU (one host sync; for per-epoch totals)."""
        total = tensor.detach().cpu().clone()
        if self.distributed:
            self._collective(lambda t, group: torch.distributed.all_reduce(t, group=group), total)
        return total

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` under torchrun (its gradients are averaged), else `model`."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return self._collective(lambda m, group: DistributedDataParallel(m, device_ids=ids), model)

    def _collective(self, op: Callable[[Any, Any], T], payload: Any) -> T:
        """Run a collective; a peer that died or stalled past the timeout becomes a one-line error."""
        if _group is None:
            raise RobenchError("the torchrun session has ended: no process group to talk to")
        try:
            return op(payload, _group)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RobenchError(
                f"rank {self.rank}: lost the other processes (one failed, or waited longer than "
                f"{TIMEOUT_ENV}={timeout().total_seconds():g}s): {detail[:200]}"
            ) from None


def _all_gather(obj: Any, group: Any) -> list:
    out = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


def _broadcast(obj: Any, group: Any) -> Any:
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _gather(obj: Any, group: Any) -> list | None:
    main = torch.distributed.get_rank() == 0
    out = [None] * torch.distributed.get_world_size(group) if main else None
    torch.distributed.gather_object(obj, out, dst=0, group=group)
    return out


def _attempt(fn: Callable[[], T], rank: int) -> tuple[T | None, str | None, BaseException | None]:
    """(value, None, None) on success, else (None, one-line message, the exception)."""
    try:
        return fn(), None, None
    except RobenchError as exc:
        return None, str(exc), exc
    except PermissionError as exc:
        return None, f"permission denied: {exc.filename}", exc
    except Exception as exc:  # a bug: the others must still stop; this rank re-raises it with its traceback
        return None, f"rank {rank} failed with {type(exc).__name__}: {exc}; see its traceback", exc


def _raise(exc: BaseException | None, message: str) -> NoReturn:
    if exc is not None and not isinstance(exc, (RobenchError, PermissionError)):
        raise exc
    raise RobenchError(message)


def launched() -> bool:
    """True when torchrun (or another launcher using its environment variables) started this process."""
    return "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or not launched at all: the process that prints results."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def current() -> World | None:
    """The World of the session in progress, if any."""
    return _active


def timeout() -> datetime.timedelta:
    """How long any collective may wait: ROBENCH_DIST_TIMEOUT seconds (default 600)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise RobenchError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """Yield the World for one command: a process group under torchrun (destroyed on exit), else one process.

    A session inside a session reuses the outer one (its device too), so `reproduce` can call
    `train` and `evaluate` under one process group.

    Args:
        device: the user's choice; under torchrun "auto" and "cuda" mean cuda:LOCAL_RANK.
    """
    global _active, _group
    if _active is not None:
        yield _active
        return
    if not launched():
        yield World(device=resolve_device(device))
        return
    rank, size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    wait = timeout()
    if not torch.distributed.is_available():
        raise RobenchError("this torch build has no torch.distributed; run without torchrun")
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()  # else gloo; a bad choice fails below
    try:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=wait, rank=rank, world_size=size)
    except (RuntimeError, ValueError) as exc:
        raise RobenchError(f"rank {rank}: cannot join the other processes: {str(exc).strip()[:200]}") from None
    try:
        _group = torch.distributed.new_group(backend="gloo", timeout=wait) if cuda else torch.distributed.group.WORLD
        world = World(rank=rank, size=size, local_rank=local_rank, launched=True)
        world = dataclasses.replace(world, device=world.agree(lambda: _rank_device(device, local_rank)))
        _active = world
        yield world
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # finished frames may hold the DDP model: see below
        raise
    finally:
        # Anything still holding the process group (a DDP model sits in reference cycles, or in the
        # frames of a traceback) must go now: left for interpreter teardown, destroying the group
        # there aborts the process ("terminate called without an active exception", SIGABRT).
        _active = _group = None
        gc.collect()
        torch.distributed.destroy_process_group()


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    if not raw.strip().isdigit():
        raise RobenchError(f"torchrun environment: {name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _rank_device(choice: str, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK for "auto" (with GPUs) and "cuda"; one fixed GPU for all ranks is refused."""
    if choice.startswith("cuda:"):
        raise RobenchError(f"--device {choice} under torchrun: each process uses cuda:LOCAL_RANK; "
                           "pass --device cuda (or auto) and pick GPUs with CUDA_VISIBLE_DEVICES")  # fmt: skip
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        resolve_device("cuda")  # the usual one-line error when there is no GPU
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RobenchError(f"LOCAL_RANK {local_rank} needs its own GPU, but {count} are visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return resolve_device(choice)


def batch_shard(n: int, batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [start, stop) of n items, in whole batches of `batch_size`.

    The batches are those of a single process (starts 0, B, 2B, ...); rank r gets batches
    [r * b // size, (r + 1) * b // size) of the b batches, so shares differ by at most one batch.
    """
    batches = -(-n // batch_size)
    first, last = rank * batches // size, (rank + 1) * batches // size
    return min(first * batch_size, n), min(last * batch_size, n)


def chunk_shard(n: int, chunk: int, rank: int, size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [start, stop) of n items, in whole chunks of `chunk` items.

    Chunks are fixed by the item index (0, chunk, 2 chunk, ...), never by the number of processes,
    so attacks run per chunk see the same images on any number of processes; a rank may get none
    (when there are fewer chunks than processes), which is fine: it still joins every collective.
    """
    chunks = -(-n // chunk)
    first, last = rank * chunks // size, (rank + 1) * chunks // size
    return min(first * chunk, n), min(last * chunk, n)
