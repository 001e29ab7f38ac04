"""Run by test_layouts_and_subclasses.py under ``torchrun --nproc_per_node=2``: dlkern's AdamW and
SGD on DTensor parameters (rows sharded unevenly over the ranks; replicated) against torch's
optimizers on the same parameters, on each kernel backend named in DLKERN_TEST_BACKENDS; and an op
on DTensor inputs refused by the kernel backends (BackendError), computed by the reference."""
import os

if not os.environ.get("CUDA_VISIBLE_DEVICES") and not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DLKERN_CUDA_EMULATE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor  # noqa: E402

import dlkern  # noqa: E402


def main():
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rank = dist.get_rank()
    cases = [("AdamW", dict(lr=1e-2, weight_decay=0.1), [Shard(0)]),
             ("AdamW", dict(lr=1e-2, amsgrad=True), [Replicate()]),
             ("SGD", dict(lr=1e-2, momentum=0.9), [Shard(0)])]
    for backend in os.environ["DLKERN_TEST_BACKENDS"].split(","):
        for name, kw, placements in cases:
            torch.manual_seed(0)
            full = torch.randn(5, 7)            # 5 rows over 2 ranks: shards of 3 and 2
            params = []
            for opt_cls, extra in ((getattr(dlkern.optim, name), {"backend": backend}),
                                   (getattr(torch.optim, name), {})):
                p = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, placements))
                opt = opt_cls([p], **kw, **extra)
                for step in range(3):
                    g = torch.randn(5, 7, generator=torch.Generator().manual_seed(step))
                    p.grad = distribute_tensor(g, mesh, placements)
                    opt.step()
                params.append((p, opt))
            (ours, ours_opt), (theirs, theirs_opt) = params
            assert isinstance(ours, DTensor) and ours.placements == theirs.placements
            torch.testing.assert_close(ours.full_tensor(), theirs.full_tensor(), rtol=1e-5, atol=1e-6)
            for key, value in theirs_opt.state[theirs].items():
                mine = ours_opt.state[ours][key]
                assert type(mine) is type(value), (key, type(mine), type(value))  # DTensor states, as torch's
                if isinstance(value, DTensor):
                    torch.testing.assert_close(mine.full_tensor(), value.full_tensor(), rtol=1e-5, atol=1e-6)
            with open(os.path.join(os.environ["DLKERN_TEST_OUT"], f"rank{rank}.txt"), "a") as f:
                f.write(f"checked {backend} {name} {placements}\n")
        # a gradient whose placement differs from its parameter's: refused by name, never misread
        p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        p.grad = distribute_tensor(torch.randn(4, 3), mesh, [Replicate()])
        try:
            dlkern.optim.AdamW([p], lr=0.1, backend=backend).step()
            raise AssertionError(f"{backend}: a gradient with other placements was not refused")
        except dlkern.BackendError as exc:
            assert "must have its placements" in str(exc), exc
        # the ops' kernels take plain tensors: a DTensor input is refused by name, never misread
        x = distribute_tensor(torch.randn(6, 8, generator=torch.Generator().manual_seed(9)), mesh, [Shard(0)])
        w = distribute_tensor(torch.rand(8) + 0.5, mesh, [Replicate()])
        try:
            dlkern.nn.functional.layer_norm(x, (8,), w, None, 1e-5, backend=backend)
            raise AssertionError(f"{backend}: a DTensor input was not refused")
        except dlkern.BackendError as exc:
            assert "DTensor inputs" in str(exc), exc
        y = dlkern.nn.functional.layer_norm(x, (8,), w, None, 1e-5, backend="reference")
        torch.testing.assert_close(y.full_tensor(), torch.nn.functional.layer_norm(
            x.full_tensor(), (8,), w.full_tensor(), None, 1e-5))
        with open(os.path.join(os.environ["DLKERN_TEST_OUT"], f"rank{rank}.txt"), "a") as f:
            f.write(f"checked {backend} layer_norm on DTensor refused\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
