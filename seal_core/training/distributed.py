"""torch.distributed for the training loops: one process per device, launched by ``torchrun``.

Every rank holds the same model, adapters and selector and walks the same global batches
(same seed, same order). Each rank computes its share of a batch; the per-sample losses are
gathered so every rank applies the identical selector update, and the LoRA gradients are
summed across ranks. Each share's loss is already divided by the *global* batch size, so the
sum is exactly the one-process gradient (up to float summation order). Rank 0 alone writes
checkpoints, logs, scores and artifacts. NCCL on GPUs, gloo on CPU.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) every helper here is a
no-op and nothing from ``torch.distributed`` is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import SealError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``world_size`` processes, this one is ``rank``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def positions(self, n: int) -> list[int]:
        # Strided, not contiguous: batches are sorted by length, so a stride gives each rank
        # samples of every length and the ranks finish their shares at about the same time.
        return list(range(self.rank, n, self.world_size))

    def share(self, idx: Sequence[int]) -> list[int]:
        """This rank's part of the global batch ``idx``."""
        return [idx[p] for p in self.positions(len(idx))]

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Per-sample values of the whole batch (length ``n``, in batch order) from each rank's share."""
        if not self.enabled:
            return local
        import torch.distributed as dist

        full = torch.zeros(n, dtype=local.dtype, device=local.device)
        full[self.positions(n)] = local
        # Every entry has one owner and zeros elsewhere, so the sum is exact.
        dist.all_reduce(full)
        return full

    def sum_scalar(self, value: float, device) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks, in one flat buffer (one collective)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
            offset += n

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (e.g. each rank's RNG state for a checkpoint)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


_STARTED_HERE = False


def is_main_process() -> bool:
    """False in the torchrun workers other than rank 0 (which print and write nothing)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group ``torchrun`` set up in the environment (or stay single-process)."""
    global _STARTED_HERE
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        except (RuntimeError, ValueError) as e:
            raise SealError(f"cannot join the torch.distributed group (rank {rank} of {world}): {e}") from None
        _STARTED_HERE = True
        if not cuda:
            # N processes on one machine's cores: without this each would start one thread per core.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return Dist(world, rank, local_rank)


def device_for(dist_ctx: Dist, device: str) -> str:
    """The device this rank trains on: its own GPU under torchrun, else ``device`` unchanged."""
    if dist_ctx.enabled and (device == "auto" and torch.cuda.is_available() or device == "cuda"):
        return f"cuda:{dist_ctx.local_rank}"
    return device


def shutdown_distributed() -> None:
    """Leave the group if :func:`init_distributed` created it (torchrun expects a clean exit)."""
    global _STARTED_HERE
    if _STARTED_HERE:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _STARTED_HERE = False


def is_main_process() -> bool:
    """False in the torchrun workers other than rank 0 (which print and write nothing)."""
    return int(os.environ.get("RANK", "0") or 0) == 0
