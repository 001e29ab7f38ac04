"""``dlkern.patch(model)``: swap supported torch modules for their dlkern subclasses in place."""
import torch

from dlkern.nn import conv as C
from dlkern.nn import normalization as N
from dlkern.nn.attention import MultiheadAttention

# torch module type -> dlkern subclass. Only exact types are swapped: a user's subclass may
# override forward, and replacing it would silently drop that code.
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


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every submodule (and ``model`` itself) whose type is a supported
    ``torch.nn`` module by its dlkern equivalent. The dlkern classes subclass torch's and add no
    state, so the swap is a class change: parameters, buffers, hooks and state_dict keys stay the
    same objects. Returns ``model``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    for module in model.modules():
        replacement = PATCHABLE.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model
