"""Shared by the convolution ops: the tensors their kernels take."""
import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_reasons(*tensors) -> list[str]:
    """Why the kernels cannot take these tensors (None entries are skipped): they need one dtype,
    float32, float16 or bfloat16."""
    ts = [t for t in tensors if isinstance(t, Tensor)]
    dtypes = {t.dtype for t in ts}
    if len(dtypes) > 1 or not dtypes <= set(KERNEL_DTYPES):
        return [f"the kernels take tensors of one dtype, float32, float16 or bfloat16; got "
                f"{', '.join(sorted(str(d)[6:] for d in dtypes))}"]
    return []
