"""``weight_norm(module)``: torch.nn.utils.parametrizations.weight_norm on dlkern's kernel.

The parametrization keeps torch's names (``parametrizations.weight.original0`` = g,
``original1`` = v), so state_dicts move between the two."""
import torch
from torch.nn.utils import parametrize

from dlkern.ops.weight_norm import weight_norm as _weight_norm


class _WeightNorm(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g, weight_v):
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight):
        weight_g = torch.norm_except_dim(weight, 2, self.dim)
        return weight_g, weight


def weight_norm(module: torch.nn.Module, name: str = "weight", dim: int | None = 0) -> torch.nn.Module:
    """Reparametrize ``module.<name>`` as ``g * v / ||v||`` (norm over every dim but ``dim``)."""
    if not isinstance(getattr(module, name, None), torch.Tensor):
        raise ValueError(f"module has no tensor parameter named {name!r}")
    parametrize.register_parametrization(module, name, _WeightNorm(dim), unsafe=True)
    return module
