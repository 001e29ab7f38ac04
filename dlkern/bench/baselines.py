"""Plain-PyTorch baselines the benchmarks compare against where torch has no equivalent op.

``selective_scan_logdepth``: the selective scan as a log-depth (Hillis-Steele) parallel scan over
the (batch, dim, L, N) decays and inputs, differentiated by autograd. It is what one writes to
avoid a Python loop over time; ``dlkern`` must beat it (issue #7: >= 2x on CPU).
"""
import torch
import torch.nn.functional as F


def selective_scan_logdepth(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False):
    f = torch.promote_types(u.dtype, torch.float32)
    batch, dim, L = u.shape
    dt = delta.to(f) + (delta_bias.to(f)[:, None] if delta_bias is not None else 0)
    if delta_softplus:
        dt = F.softplus(dt)

    def per_step(X):  # -> broadcastable to (batch, dim, L, N)
        X = X.to(f)
        if X.dim() == 2:
            return X[:, None, :]
        if X.dim() == 3:
            return X.transpose(1, 2)[:, None]
        return X.repeat_interleave(dim // X.shape[1], dim=1).transpose(2, 3)

    a = torch.exp(dt[..., None] * A.to(f)[:, None, :])          # (batch, dim, L, N)
    x = (dt * u.to(f))[..., None] * per_step(B)                  # (batch, dim, L, N)
    k = 1
    while k < L:  # after the step for k, x[t] sums the last 2k inputs, a[t] their decay
        x = torch.cat([x[:, :, :k], a[:, :, k:] * x[:, :, :-k] + x[:, :, k:]], dim=2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], dim=2)
        k *= 2
    out = (x * per_step(C)).sum(-1)
    if D is not None:
        out = out + u.to(f) * D.to(f)[:, None]
    if z is not None:
        out = out * F.silu(z.to(f))
    out = out.to(u.dtype)
    return (out, x[:, :, -1]) if return_last_state else out
