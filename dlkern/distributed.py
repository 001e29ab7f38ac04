"""What ``dlkern train`` needs under ``torchrun``: the process group's lifetime, the model's
wrapping (DDP, or FSDP2's ``fully_shard`` over the model's blocks) and, for sharded runs,
distributed checkpoints (``torch.distributed.checkpoint``: every rank writes its shards; a run can
resume with another world size)."""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

@contextmanager
def process_group(device):
    """(rank, world_size, device); under torchrun, the process group for the duration of a run.

    A group this run created is torn down here, in a fixed order, while the interpreter is fully
    alive: every rank waits at a barrier (no rank leaves while a peer still talks to it or rank 0
    still writes its files), the caller has dropped the DDP wrapper (its reducer holds the group and
    gloo's pending work), then the group is destroyed. Left to interpreter exit instead, gloo's
    threads and the tensors their work holds are destroyed during finalization, which aborted rank 1
    now and then ("terminate called without an active exception")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ok = False
    try:
        yield dist.get_rank(), world, device
        ok = True
    finally:
        if owned:
            if ok:  # after an exception a peer may never arrive: no barrier then
                dist.barrier()
            gc.collect()  # a DDP wrapper caught in a reference cycle still holds the group
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: int, device: torch.device, fsdp: bool) -> torch.nn.Module:
    """The module the training loop calls: the model itself on one process; under torchrun DDP,
    or with ``fsdp`` FSDP2: every block of every ``nn.ModuleList`` (a transformer's layers, a
    ResNet's stages) is sharded on its own, then the root (embeddings, heads, the rest). FSDP2
    shards in place: ``model``'s parameters become DTensors, and the returned module is ``model``."""
    if fsdp:
        if world == 1:
            raise ValueError("fsdp=True needs a process group: launch with torchrun --nproc_per_node=N")
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, torch.nn.ModuleList):
                for block in module:
                    if any(p.requires_grad for p in block.parameters()):
                        fully_shard(block)
        fully_shard(model)
        return model
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def save_sharded(path: Path, model, optimizer, meta: dict) -> None:
    """A distributed checkpoint in the folder ``path``: model and optimizer state as each rank's
    shards (``torch.distributed.checkpoint``), and ``meta.pt`` (step, losses, config, RNG state)
    written by rank 0. Every rank must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
    if dist.get_rank() == 0:
        torch.save(meta, path / "meta.pt")
    dist.barrier()  # meta.pt exists for every rank once this returns


def load_sharded_meta(path: Path) -> dict:
    if not (path / "meta.pt").exists():
        raise FileNotFoundError(f"--resume: no distributed checkpoint at {path}")
    return torch.load(path / "meta.pt", map_location="cpu", weights_only=False)


def load_sharded(path: Path, model, optimizer) -> None:
    """Loads :func:`save_sharded`'s model and optimizer state into the (already sharded) model and
    its optimizer, resharding if the world size changed. Every rank must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

