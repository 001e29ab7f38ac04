"""``dlkern.patch(model)``: swap supported torch modules for their dlkern subclasses in place;
``dlkern.patch_functional()``: route ``torch.nn.functional``'s norm and conv calls to dlkern."""
import contextlib
import functools
import threading

import torch
import torch.nn.functional as F

from dlkern.nn import conv as C
from dlkern.nn import functional as DF
from dlkern.nn import normalization as N
from dlkern.nn.attention import MultiheadAttention

# torch module type -> dlkern subclass.
PATCHABLE = {
    torch.nn.LayerNorm: N.LayerNorm,
    torch.nn.RMSNorm: N.RMSNorm,
    torch.nn.BatchNorm1d: N.BatchNorm1d,
    torch.nn.BatchNorm2d: N.BatchNorm2d,
    torch.nn.BatchNorm3d: N.BatchNorm3d,
    torch.nn.InstanceNorm1d: N.InstanceNorm1d,
    torch.nn.InstanceNorm2d: N.InstanceNorm2d,
    torch.nn.InstanceNorm3d: N.InstanceNorm3d,
    torch.nn.GroupNorm: N.GroupNorm,
    torch.nn.MultiheadAttention: MultiheadAttention,
    torch.nn.Conv2d: C.Conv2d,
}
_MIXED = {}   # (user subclass, dlkern class) -> the class a patched instance of it gets


def _computation(ours, base) -> set:
    """The methods dlkern's class replaces in torch's ``base`` (forward, a conv's _conv_forward)."""
    return {name for k in ours.__mro__ if k not in base.__mro__
            for name, value in vars(k).items() if callable(value) and hasattr(base, name)}


def replacement_for(cls):
    """The class a module of type ``cls`` becomes, or None. An exact torch type becomes dlkern's
    subclass. A user's (or a library's) subclass of one is patched only if every method dlkern
    replaces is still torch's own there (compared by identity: a subclass that overrides forward
    keeps its code and is left alone); it becomes a class deriving from dlkern's and from it, so
    its other methods, its name and ``isinstance`` checks stay."""
    if cls in PATCHABLE:
        return PATCHABLE[cls]
    for base, ours in PATCHABLE.items():
        if not issubclass(cls, base) or issubclass(cls, ours):
            continue
        if all(getattr(cls, name) is getattr(base, name) for name in _computation(ours, base)):
            if (cls, ours) not in _MIXED:
                _MIXED[cls, ours] = type(cls.__name__, (ours, cls),
                                         {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                          "__doc__": cls.__doc__})
            return _MIXED[cls, ours]
        return None
    return None


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every submodule (and ``model`` itself) whose type is a supported
    ``torch.nn`` module, or a subclass of one that keeps torch's computation, by its dlkern
    equivalent (see :func:`replacement_for`). The dlkern classes subclass torch's and add no state,
    so the swap is a class change: parameters, buffers, hooks and state_dict keys stay the same
    objects. Returns ``model``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    for module in model.modules():
        replacement = replacement_for(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model


FUNCTIONALS = ("layer_norm", "rms_norm", "group_norm", "batch_norm", "instance_norm", "conv2d")
_routing = threading.local()


def _routed(name, original):
    ours = getattr(DF, name)

    @functools.wraps(original)
    def call(*args, **kwargs):
        # dlkern's own fallbacks (the references, non-depthwise convs) call torch.nn.functional:
        # inside a routed call they get torch's function, not dlkern's again.
        if getattr(_routing, "active", False):
            return original(*args, **kwargs)
        _routing.active = True
        try:
            return ours(*args, **kwargs)
        finally:
            _routing.active = False
    return call


@contextlib.contextmanager
def patch_functional():
    """While active, ``torch.nn.functional.{layer_norm, rms_norm, group_norm, batch_norm,
    instance_norm, conv2d}`` are dlkern's (same signatures; conv2d serves depthwise convolutions and
    passes the rest to torch). Code that looks them up at call time — torch's own modules, and the
    norm subclasses of timm or HF that compute with the functionals (a channels-first LayerNorm2d,
    BatchNormAct2d) — then runs dlkern's ops."""
    originals = {name: getattr(F, name) for name in FUNCTIONALS}
    for name, original in originals.items():
        setattr(F, name, _routed(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(F, name, original)
