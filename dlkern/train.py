"""Train a registered model on its embedded task: ``dlkern train <model>`` or
``python -m dlkern.train <model>``; under ``torchrun --nproc_per_node=N`` it trains with
DistributedDataParallel (gloo on CPU, nccl on GPU), each rank on its slice of the same global batch.

Prints a progress bar and periodic metrics, the final metric against the task's target, saves
``checkpoint.pt`` (model + optimizer state_dict + step + loss history; ``--resume`` continues it)
and ``loss.png`` (and ``samples.png`` for models that ``sample``) into ``--out``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import contextlib
import inspect
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import dlkern
import dlkern.optim
from dlkern import distributed
from dlkern.threads import ThreadTuner, user_thread_count
from dlkern.models import create_model, get_entry, get_task, list_models, model_config
from dlkern.models.packing import pack, packed_loss
from dlkern.models.registry import task_runs
from dlkern.models.tasks import TASKS

OPTIMIZERS = {"adamw": dlkern.optim.AdamW, "adam": dlkern.optim.Adam, "sgd": dlkern.optim.SGD}


def make_optimizer(model, settings, backend):
    """Weight decay on matrices and conv kernels only (biases, norm weights and embeddings' peers
    stay undecayed), nanoGPT's split. The step runs on ``backend`` like every op."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = {"momentum": 0.9} if settings.optimizer == "sgd" else {"betas": settings.betas}
    return OPTIMIZERS[settings.optimizer](groups, lr=settings.lr, backend=backend, **kwargs)


def lr_at(step, total, settings):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, total - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_loss_plot(losses, path, title) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss plot"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"loss curve: {path}"


@torch.no_grad()
def save_samples(model, path, seed: int, n: int = 64) -> str:
    """``model.sample(n)`` as a PNG: images (n, C, H, W) tiled into a grid, 2-D points (n, 2) as a
    scatter plot (of 2000 draws). The draws use their own RNG stream (seeded), so the training RNG
    state, and with it a resumed run, is untouched."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no sample plot"
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = model.sample(n).float().cpu()
        points = model.sample(2000).float().cpu() if images.dim() == 2 else None
    model.train(was_training)
    if points is not None:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(points[:, 0].tolist(), points[:, 1].tolist(), s=1)   # lists: no torch-numpy bridge needed
        ax.set(aspect="equal", title="samples")
    else:
        lo, hi = images.amin(), images.amax()
        images = (images - lo) / (hi - lo).clamp_min(1e-8)                 # min-max to [0, 1]
        side = math.ceil(math.sqrt(images.shape[0]))
        grid = torch.ones(images.shape[0] if side * side == images.shape[0] else side * side, *images.shape[1:])
        grid[:images.shape[0]] = images
        c, h, w = images.shape[1:]
        grid = grid.view(side, side, c, h, w).permute(0, 3, 1, 4, 2).reshape(side * h, side * w, c)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow((grid.squeeze(-1) if c == 1 else grid).tolist(), cmap="gray", interpolation="nearest")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"samples: {path}"


def _step_loss(task, net, seed, step, batch_size, device, shard, packing):
    """The loss of this step's batch (this rank's slice), packed or padded as ``packing`` says."""
    if packing is None:
        return task.loss(net, tuple(t[shard] for t in task.batch_for_step(seed, step, batch_size, device)))
    batch = tuple(t[shard] for t in task.variable_batch_for_step(seed, step, batch_size, device))
    return packed_loss(net, pack(*batch)) if packing == "packed" else task.padded_loss(net, batch)


def train(name: str, *, steps: int | None = None, backend: str = "auto", device: str | None = None,
          compile: bool = False, seed: int = 0, out: str | os.PathLike | None = None, resume: bool = False,
          stop_at: int | None = None, tiny: bool = False, batch_size: int | None = None,
          eval_every: int | None = None, evaluate: bool = True, progress: bool = True,
          lr: float | None = None, config: dict | None = None, optimizer_backend: str | None = None,
          threads: int | str | None = None, fsdp: bool = False, checkpoint_every: int | None = None,
          channels_last: bool = False, task: str | None = None, packing: str | None = None,
          log=print) -> dict:
    """Run ``name``'s task; returns {"losses", "metric", "target", "reached", "steps", "seconds", ...}.
    ``stop_at``: stop (and checkpoint) after that step, as if interrupted; ``--resume`` continues.
    ``optimizer_backend``: the optimizer step's backend when it should differ from ``backend``.
    ``threads``: torch's intra-op threads on CPU: a count, ``"auto"`` (measured during the run by
    :class:`dlkern.threads.ThreadTuner`), or None to leave torch's setting alone.
    ``fsdp``: under torchrun, shard the model with FSDP2 (instead of DDP) and checkpoint with
    ``torch.distributed.checkpoint`` into ``out/checkpoint/``.
    ``checkpoint_every``: with ``out``, also checkpoint every that many steps (default: the eval
    interval), so a killed run can ``resume``; Ctrl-C checkpoints the last whole step.
    ``channels_last``: the model's 4-D parameters (conv weights) in channels_last memory format.
    ``task``: train on another task the model has a registered run for (``register_task_run``).
    ``packing``: ``"packed"`` trains on variable-length batches packed into one row (varlen
    attention, conv/scan reset at sequence boundaries); ``"padded"`` on the same batches padded
    (the packed run's baseline: equal losses). See :mod:`dlkern.models.packing`."""
    for arg, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                       ("checkpoint_every", checkpoint_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    entry = get_entry(name, task)
    task = get_task(entry.task)
    if packing not in (None, "packed", "padded"):
        raise ValueError(f"packing must be None, 'packed' or 'padded', got {packing!r}")
    if packing and not task.packable:
        raise ValueError(f"--packed: task {entry.task!r} has no variable-length batches "
                         f"(packable tasks: {', '.join(n for n, t in TASKS.items() if t.packable)})")
    settings = entry.train if lr is None else dataclasses.replace(entry.train, lr=lr)
    requested_steps, steps = steps, steps or settings.steps
    batch_size = batch_size or settings.batch_size
    eval_every = eval_every or settings.eval_every
    checkpoint_every = checkpoint_every or eval_every
    device = _usable_device(device, backend)
    with distributed.process_group(device) as (rank, world, device):
        out = Path(out) if out is not None else None
        main = rank == 0
        if out is not None and main:
            out.mkdir(parents=True, exist_ok=True)

        cfg = model_config(name, tiny, entry.task, **(config or {}))
        start, losses, ckpt = 0, [], None
        ckpt_path = (out / ("checkpoint" if fsdp else "checkpoint.pt")) if out is not None else None
        if resume:  # the checkpoint's model config, seed and batch size, whatever the command line says
            if ckpt_path is None or not ckpt_path.exists():
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
            ckpt = (distributed.load_sharded_meta(ckpt_path) if fsdp
                    else torch.load(ckpt_path, map_location=device))
            cfg, seed, batch_size = ckpt["config"], ckpt["seed"], ckpt["batch_size"]
            if ckpt.get("task", entry.task) != entry.task:
                raise ValueError(f"--resume: the checkpoint trained on task {ckpt['task']!r}, not {entry.task!r} "
                                 f"(give --task {ckpt['task']})")
            packing = ckpt.get("packing", packing)    # the data stream depends on it
        if batch_size % world:
            raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world}")
        torch.manual_seed(seed)
        model = create_model(name, task=entry.task, **cfg).to(device)
        if packing == "packed" and "cu_seqlens" not in inspect.signature(model.forward).parameters:
            raise ValueError(f"--packed: model {name!r} does not take packed batches (cu_seqlens)")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        net = distributed.wrap(model, world, device, fsdp)   # FSDP2 shards model's parameters in place
        optimizer = make_optimizer(model, settings, optimizer_backend or backend)
        if ckpt is not None:
            if fsdp:
                distributed.load_sharded(ckpt_path, model, optimizer)
            else:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
            start, losses = ckpt["step"], ckpt["losses"]
            steps = requested_steps or ckpt["total_steps"]   # --steps on resume: the new total
            if steps <= start:
                raise ValueError(f"the checkpoint is at step {start}; --steps {steps} leaves nothing to train "
                                 f"(give a larger total)")
            # dropout / drop-path draws continue where the interrupted run stopped
            torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
            if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        if compile:
            net = torch.compile(net)

        end = min(steps, stop_at) if stop_at is not None else steps
        shard = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
        t0 = time.perf_counter()
        history = []
        bar = tqdm(range(start, end), initial=start, total=steps, disable=not (progress and main),
                   desc=f"{name} [{backend}]", dynamic_ncols=True)
        tuner = ThreadTuner() if threads == "auto" and device.type == "cpu" else None
        if isinstance(threads, int):
            torch.set_num_threads(threads)
        def checkpoint(done):
            if out is not None:
                _save_checkpoint(ckpt_path, fsdp, main, model, optimizer, {
                    "step": done, "total_steps": steps, "losses": losses, "config": cfg, "seed": seed,
                    "task": entry.task, "packing": packing,
                    "batch_size": batch_size,
                    "rng": {"cpu": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}})

        with dlkern.use_backend(backend), _deferred_interrupt() as interrupt:
            net.train()
            for step in bar:
                if tuner is not None:
                    tuner.before_step()
                    step_start = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, steps, settings)
                loss = _step_loss(task, net, seed, step, batch_size, device, shard, packing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.detach()
                if world > 1:
                    dist.all_reduce(value)
                    value /= world
                losses.append(value.item())
                if tuner is not None:
                    tuner.after_step(time.perf_counter() - step_start)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                # a sharded model evaluates on every rank (its forward gathers the parameters)
                if evaluate and (main or fsdp) and (step + 1) % eval_every == 0 and step + 1 < steps:
                    metric = task.evaluate(model, device)
                    history.append((step + 1, metric))
                    if main:
                        bar.write(f"step {step + 1:5d}  loss {losses[-1]:.4f}  {task.metric} {metric:.4f}")
                if interrupt.requested:   # Ctrl-C: finish the step, checkpoint it, stop
                    break
                if (step + 1) % checkpoint_every == 0 and step + 1 < end:
                    checkpoint(step + 1)   # a killed run loses at most checkpoint_every steps
            seconds = time.perf_counter() - t0
            if interrupt.requested:
                checkpoint(len(losses))
                bar.close()
                raise KeyboardInterrupt(f"interrupted after step {len(losses)}"
                                        + (f"; checkpoint in {ckpt_path}: continue with --resume" if out else ""))
            # rank 0 reports (a sharded model evaluates on every rank: its forward is collective)
            metric = task.evaluate(model, device) if evaluate and end == steps and (main or fsdp) else None
            # models with more than one figure of merit (the VAEs' ELBO and IWAE bounds) report them too
            details = (model.details(task.test_set(), device) if metric is not None and main
                       and hasattr(model, "details") else {})
        bar.close()

        result = {"model": name, "task": task.name, "metric_name": task.metric, "metric": metric,
                  "target": task.target, "chance": task.chance,
                  "reached": None if metric is None else task.reached(metric), "losses": losses,
                  "steps": end, "total_steps": steps, "seconds": seconds, "backend": backend,
                  "device": str(device), "world_size": world, "history": history, "details": details,
                  "threads": {"probes": tuner.history, "final": tuner.chosen} if tuner is not None
                  else torch.get_num_threads()}
        if main and metric is not None:
            cmp = ">=" if task.higher_is_better else "<="
            log(f"{name}: {task.metric} {metric:.4f} (target {cmp} {task.target}, chance {task.chance:.3f}) "
                f"{'REACHED' if result['reached'] else 'NOT reached'} after {end} steps in {seconds:.1f} s")
            if details:
                log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in details.items()))
        checkpoint(end)
        if out is not None and main:
            (out / "result.json").write_text(json.dumps(result, indent=1))
            log(f"checkpoint: {ckpt_path}; " + save_loss_plot(losses, out / "loss.png", f"{name} ({task.name})"))
            if hasattr(model, "sample") and end == steps:
                log(save_samples(model, out / "samples.png", seed))
        del net  # DDP's reducer holds the process group: drop it before the group goes
    return result


def _usable_device(device: str | None, backend: str) -> torch.device:
    """The device to train on, or a ValueError that says why the requested one cannot serve."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise ValueError(f"device must be cpu or cuda, got {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available")
    if backend != "auto":
        reasons = dlkern.backend.availability(dlkern.backend.check_backend_name(backend), device)
        if reasons:
            raise ValueError(f"backend {backend!r} cannot run on {device.type}: " + "; ".join(reasons))
    return device


def _save_checkpoint(path: Path, fsdp: bool, main: bool, model, optimizer, meta: dict) -> None:
    if fsdp:  # every rank writes its shards
        distributed.save_sharded(path, model, optimizer, meta)
    elif main:  # written aside, then renamed: a run killed while saving keeps the previous one
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **meta}, tmp)
        os.replace(tmp, path)


class _Interrupt:
    requested = False


@contextlib.contextmanager
def _deferred_interrupt():
    """Ctrl-C during training sets a flag instead of raising in the middle of an optimizer step;
    the loop then checkpoints the last whole step. A second Ctrl-C interrupts at once."""
    flag = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag   # signal handlers belong to the main thread
        return

    def handler(signum, frame):
        flag.requested = True
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _threads_arg(text: str):
    try:
        return user_thread_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a registered model (omit to list them)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "triton", "cuda"))
    p.add_argument("--task", help="another task the model has a registered run for (default: its own; "
                   "the model list names them)")
    p.add_argument("--steps", type=_positive_int, help="training steps (default: the model's; with --resume "
                   "the new total)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="train_out", help="folder for checkpoint.pt, loss.png, result.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--batch-size", type=_positive_int, help="global batch size (default: the model's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the model's)")
    p.add_argument("--tiny", action="store_true", help="the test-sized model config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the metric (losses only)")
    p.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    p.add_argument("--checkpoint-every", "--save-every", type=_positive_int, metavar="N",
                   help="also checkpoint every N steps (default: the model's evaluation interval)")
    p.add_argument("--channels-last", action="store_true", help="conv weights (4-D parameters) in "
                   "channels_last memory format")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model with FSDP2 "
                   "(default: DDP) and save distributed checkpoints (OUT/checkpoint/)")
    packing = p.add_mutually_exclusive_group()
    packing.add_argument("--packed", dest="packing", action="store_const", const="packed",
                         help="variable-length batches packed into one row, no padding (copy, palindrome)")
    packing.add_argument("--varlen-padded", dest="packing", action="store_const", const="padded",
                         help="the same variable-length batches, padded (the --packed run's baseline)")
    p.add_argument("--threads", type=_threads_arg, help="intra-op threads on CPU: N or auto (default: auto, measured during "
                   "the run, unless OMP_NUM_THREADS is set)")


def run(args) -> int:
    if not args.model:
        for name in list_models():
            entry = get_entry(name)
            also = task_runs(name)
            print(f"{name:20} task {entry.task:11} {entry.doc}" + (f" (also --task {', '.join(also)})" if also else ""))
        return 0
    try:
        result = train(args.model, steps=args.steps, backend=args.backend, device=args.device,
                       compile=args.compile, seed=args.seed, out=args.out, resume=args.resume, tiny=args.tiny,
                       batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress,
                       evaluate=not args.no_eval,
                       threads=args.threads if args.threads is not None else user_thread_count(None),
                       fsdp=args.fsdp, checkpoint_every=args.checkpoint_every,
                       channels_last=args.channels_last, task=args.task, packing=args.packing)
    except (ValueError, FileNotFoundError, dlkern.BackendError) as exc:  # the user's to fix: one line
        if getattr(args, "debug", False):
            raise
        print(f"dlkern train: error: {exc} (--debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"dlkern train: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    # under torchrun only rank 0 evaluates (metric None elsewhere): its verdict is the exit status
    return 0 if result["reached"] in (True, None) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlkern.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
