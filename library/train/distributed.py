"""Process layout of a run (one process, or several started by `accelerate launch`/`torchrun`) and the few
collective operations the loop needs. Gradients are averaged explicitly over the LoRA parameters only, so the
frozen base model is never wrapped or broadcast."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class Distributed:
    """Rank, world size and device; collectives are no-ops in a single process."""

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import PartialState

        # without a GPU, accelerate only forms a multi-process CPU group (gloo) when told it runs on CPU
        state = PartialState(cpu=cpu or not torch.cuda.is_available())
        self.rank = state.process_index
        self.world = state.num_processes
        self.device = state.device
        self.enabled = self.world > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every rank (e.g. a random seed)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(t, 0)
        return int(t.item())

    def broadcast_params(self, params: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank's tensors (identical start)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                buf = p.detach().to(self._comm_device()).contiguous()
                dist.broadcast(buf, 0)
                p.copy_(buf.to(p.device))

    def average_gradients(self, params: Sequence[torch.Tensor], stop: bool = False) -> bool:
        """Average gradients over ranks in one flat all-reduce (missing grads count as zero); also tells every
        rank whether any of them asked to stop. Returns that combined stop flag."""
        if not self.enabled:
            return stop
        device = self._comm_device()
        flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float().to(device)
                for p in params]
        flat.append(torch.tensor([1.0 if stop else 0.0], device=device))
        buf = torch.cat(flat)
        dist.all_reduce(buf)
        stop_any = buf[-1].item() > 0
        buf = buf[:-1] / self.world
        offset = 0
        for p in params:
            n = p.numel()
            grad = buf[offset:offset + n].view_as(p).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.copy_(grad)
            offset += n
        return stop_any

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")
