"""timm-style model registry: ``@register_model`` on a factory, ``create_model(name, **config)``,
``list_models()``. Each entry also names its embedded task and the training settings that reach
the task's target in the default CPU budget, so ``dlkern train <name>`` and the tests need nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and schedule of a model's default run (``dlkern train`` can override steps)."""
    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"          # a name in dlkern.train.OPTIMIZERS
    betas: tuple = (0.9, 0.999)       # Adam / AdamW moment decays (GANs train with β1 = 0.5)
    weight_decay: float = 0.0
    warmup: int = 0                   # linear warm-up steps, then cosine decay to lr / 10
    eval_every: int = 100


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., torch.nn.Module]
    task: str                         # a name in dlkern.models.tasks.TASKS
    config: dict                      # the default run's model config (on top of the task's)
    tiny: dict                        # a config small enough for the interpreted-kernel tests
    train: TrainSettings
    doc: str = field(default="")


_MODELS: dict[str, ModelEntry] = {}
# (model, task) -> the entry of a registered model trained on another task (``dlkern train M --task T``)
_TASK_RUNS: dict[tuple[str, str], ModelEntry] = {}


def register_model(name: str, *, task: str, train: TrainSettings, config: dict | None = None,
                   tiny: dict | None = None):
    """Decorator: ``@register_model("gpt", task="copy", train=TrainSettings(...))`` on a factory
    ``fn(**config) -> nn.Module``."""
    def decorate(factory):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelEntry(name, factory, task, dict(config or {}), dict(tiny or {}), train,
                                   (factory.__doc__ or "").strip())
        return factory
    return decorate


def register_task_run(name: str, task: str, *, train: TrainSettings, config: dict | None = None,
                      tiny: dict | None = None) -> None:
    """A registered model's settings on another task: ``dlkern train <name> --task <task>``."""
    entry = get_entry(name)
    if (name, task) in _TASK_RUNS or task == entry.task:
        raise ValueError(f"model {name!r} already has a run on task {task!r}")
    _TASK_RUNS[(name, task)] = ModelEntry(name, entry.factory, task, dict(config or {}),
                                          dict(tiny if tiny is not None else entry.tiny), train, entry.doc)


def list_models() -> list[str]:
    return sorted(_MODELS)


def task_runs(name: str) -> list[str]:
    """The tasks ``name`` trains on besides its own (``--task``)."""
    return sorted(task for model, task in _TASK_RUNS if model == name)


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    """The model's entry, or (``task``) its registered run on that task."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if task is None or task == _MODELS[name].task:
        return _MODELS[name]
    if (name, task) not in _TASK_RUNS:
        tasks = ", ".join([_MODELS[name].task] + task_runs(name))
        raise ValueError(f"model {name!r} has no run on task {task!r}; its tasks: {tasks}")
    return _TASK_RUNS[(name, task)]


def model_config(name: str, tiny: bool = False, task: str | None = None, **overrides) -> dict:
    """The task's input/output sizes, then the entry's default (or tiny) config, then overrides."""
    from dlkern.models.tasks import get_task

    entry = get_entry(name, task)
    return {**get_task(entry.task).model_config(), **(entry.tiny if tiny else entry.config), **overrides}


def create_model(name: str, tiny: bool = False, task: str | None = None, **config) -> torch.nn.Module:
    """Build a registered model for its task, or for ``task`` when it has a run there (``tiny=True``:
    the test-sized config); keyword arguments override the config fields."""
    return get_entry(name, task).factory(**model_config(name, tiny, task, **config))
