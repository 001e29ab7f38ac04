"""Triton depthwise conv2d (``F.conv2d(groups=C)`` with weight (C, 1, KH, KW)) and its backward.

x (N, C, H, W) with any strides (NCHW, channels_last, strided views); the output keeps x's dense
layout. Padding is (top, left): the bottom/right padding only shows in the output size (OH, OW), so
"same" with an even kernel (asymmetric) costs nothing.

* forward / dx: one program per (pixel tile, channel tile), the pixels of all images flattened (a
  tile holds the next image's pixels where a plane ends: small planes waste no lanes), the tile's
  long side along the unit-stride dimension (pixels for NCHW, channels for channels_last); taps are runtime loops, so
  any kernel size compiles once. dx gathers dy at the output pixels whose window covers the input
  pixel (oh = (ih + pad - kh * dil) / stride when that divides).
* dweight/dbias: one program per (pixel chunk, tap block, channel tile) accumulates a
  [taps, channels] tile over its pixels and writes fp32 partials, summed in a fixed order
  (deterministic).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

TAP_BLOCK = 64      # taps per dweight program (7x7 = 49 in one)
MAX_CHUNKS = 128    # pixel chunks of the dweight reduction (partials: chunks x C x KH*KW fp32)


@triton.jit
def _dw_fwd_kernel(
    X, Wt, Bias, Y,                       # x (N, C, H, W), weight (C, KH*KW), bias (C,), y (N, C, OH, OW)
    C, H, W, OH, OW, KH, KW, NP,          # sizes; NP = N * OH * OW output pixels
    sh, sw, ph, pw, dh, dw,               # stride, top/left padding, dilation
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]    # (image, pixel) flattened
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    n = p // (OH * OW)
    q = p - n * (OH * OW)
    oh = q // OW
    ow = q - oh * OW
    n = n.to(tl.int64)
    cmask = c < C
    pmask = (p < NP) & cmask
    xbase = X + n * sxn + c.to(tl.int64) * sxc
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for kh in range(KH):
        ih = oh * sh - ph + kh * dh
        hmask = pmask & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * sw - pw + kw * dw
            m = hmask & (iw >= 0) & (iw < W)
            xv = tl.load(xbase + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=m, other=0.0)
            wv = tl.load(Wt + c * (KH * KW) + kh * KW + kw, mask=cmask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + c, mask=cmask, other=0.0).to(tl.float32)
    out = Y + n * syn + c.to(tl.int64) * syc + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    tl.store(out, acc.to(Y.dtype.element_ty), mask=pmask)


@triton.jit
def _dw_dx_kernel(
    DY, Wt, DX,                           # dy (N, C, OH, OW), weight (C, KH*KW), dx (N, C, H, W)
    C, H, W, OH, OW, KH, KW, NP,          # NP = N * H * W input pixels
    sh, sw, ph, pw, dh, dw,
    sdyn, sdyc, sdyh, sdyw, sdxn, sdxc, sdxh, sdxw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]    # (image, input pixel) flattened
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    n = p // (H * W)
    q = p - n * (H * W)
    ih = q // W
    iw = q - ih * W
    n = n.to(tl.int64)
    cmask = c < C
    pmask = (p < NP) & cmask
    dybase = DY + n * sdyn + c.to(tl.int64) * sdyc
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for kh in range(KH):
        th = ih + ph - kh * dh            # = oh * stride when this tap reaches ih
        oh = tl.where(th >= 0, th, 0) // sh
        hmask = pmask & (th >= 0) & (oh * sh == th) & (oh < OH)
        for kw in range(KW):
            tw = iw + pw - kw * dw
            ow = tl.where(tw >= 0, tw, 0) // sw
            m = hmask & (tw >= 0) & (ow * sw == tw) & (ow < OW)
            g = tl.load(dybase + oh.to(tl.int64) * sdyh + ow.to(tl.int64) * sdyw, mask=m, other=0.0)
            wv = tl.load(Wt + c * (KH * KW) + kh * KW + kw, mask=cmask, other=0.0)
            acc += g.to(tl.float32) * wv.to(tl.float32)
    out = DX + n * sdxn + c.to(tl.int64) * sdxc + ih.to(tl.int64) * sdxh + iw.to(tl.int64) * sdxw
    tl.store(out, acc.to(DX.dtype.element_ty), mask=pmask)


@triton.jit
def _dw_dweight_kernel(
    DY, X, DWP, DBP,                      # DWP (chunks, C, KH*KW), DBP (chunks, C): fp32 partials
    C, H, W, OH, OW, KH, KW, NP, CHUNK,   # NP = N * OH * OW output pixels, CHUNK of them per program
    sh, sw, ph, pw, dh, dw,
    sdyn, sdyc, sdyh, sdyw, sxn, sxc, sxh, sxw,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    chunk = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]     # taps (BT, 1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]     # channels (1, BC)
    cmask = c < C
    tmask = t < KH * KW
    kh_off = (t // KW) * dh
    kw_off = (t % KW) * dw
    c64 = c.to(tl.int64)
    acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    accb = tl.zeros([1, BLOCK_C], tl.float32)
    for i in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, NP)):
        n = (i // (OH * OW)).to(tl.int64)
        oh = (i // OW) % OH
        ow = i % OW
        g = tl.load(DY + n * sdyn + c64 * sdyc + oh * sdyh + ow * sdyw, mask=cmask, other=0.0).to(tl.float32)
        ih = oh * sh - ph + kh_off
        iw = ow * sw - pw + kw_off
        m = tmask & cmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(X + n * sxn + c64 * sxc + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=m, other=0.0)
        acc += g * xv.to(tl.float32)
        accb += g
    tap_count = KH * KW
    tl.store(DWP + (chunk * C + c64) * tap_count + t, acc, mask=tmask & cmask)
    if tl.program_id(1) == 0:
        tl.store(DBP + chunk * C + c64, accb, mask=cmask)


def channels_last(x):
    """The layout rule every backend (and the fake kernels) follows: outputs and dx are
    channels_last when x has unit channel stride (and more than one channel), else contiguous."""
    return x.stride(1) == 1 and x.shape[1] > 1


def new_image(x, h, w):
    """A new (N, C, h, w) tensor in x's dtype and layout (see channels_last), NaN-filled in debug mode."""
    n, c = x.shape[:2]
    if channels_last(x):
        return new_empty(n, h, w, c, dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    return new_empty(n, c, h, w, dtype=x.dtype, device=x.device)


def _tiles(x):
    """(BLOCK_P, BLOCK_C): channels_last puts channels on the long side of the tile. The pixel side
    runs over (image, pixel) flattened, so a small plane (the 7x7 ... 1x1 late stages of ConvNeXt,
    EfficientNet, MobileNet) fills the tile with the next images' pixels instead of masked lanes
    (per image, a 1x1 plane left 127 of 128 lanes idle NCHW and 15 of 16 channels_last; 7x7, 49
    pixels, ran 64: 77 % of the lanes). The tile itself stays the one the large planes use."""
    if channels_last(x):
        return 16, 32
    return 128, 2


def _pixel_grid(pixels, bp, C, bc):
    """(pixel tiles over all images, 1, channel tiles); the flattened pixel index is int32."""
    if pixels >= 2**31:
        raise ValueError(f"depthwise conv2d: {pixels} pixels (images x plane) pass the kernels' int32 index")
    return (triton.cdiv(pixels, bp), 1, triton.cdiv(C, bc))


def _args(conv):
    """(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w) from conv = (stride, padding, dilation)."""
    (sh, sw), (ph, pw), (dh, dw) = conv
    return sh, sw, ph, pw, dh, dw


def depthwise_conv2d_fwd(x, weight, bias, stride, padding, dilation, out_hw):
    """x (N, C, H, W) any strides, weight (C, KH, KW) contiguous, bias (C,) or None; stride,
    padding (top, left), dilation: pairs; out_hw = (OH, OW). -> y (N, C, OH, OW) in x's layout."""
    N, C, H, W = x.shape
    KH, KW = weight.shape[1:]
    OH, OW = out_hw
    y = new_image(x, OH, OW)
    bp, bc = _tiles(x)
    _dw_fwd_kernel[_pixel_grid(N * OH * OW, bp, C, bc)](
                         x, weight, bias if bias is not None else weight, y, C, H, W, OH, OW, KH, KW, N * OH * OW,
                         *_args((stride, padding, dilation)), *x.stride(), *y.stride(),
                         HAS_BIAS=bias is not None, BLOCK_P=bp, BLOCK_C=bc, num_warps=4)
    return y


def depthwise_conv2d_bwd(dy, x, weight, has_bias, stride, padding, dilation):
    """-> (dx like x, dweight (C, KH, KW) in weight's dtype, dbias (C,) in x's dtype or None)."""
    N, C, H, W = x.shape
    KH, KW = weight.shape[1:]
    OH, OW = dy.shape[2:]
    conv = _args((stride, padding, dilation))
    dx = new_image(x, H, W)
    bp, bc = _tiles(x)
    _dw_dx_kernel[_pixel_grid(N * H * W, bp, C, bc)](
        dy, weight, dx, C, H, W, OH, OW, KH, KW, N * H * W, *conv, *dy.stride(), *dx.stride(),
        BLOCK_P=bp, BLOCK_C=bc, num_warps=4)
    pixels = N * OH * OW
    chunks = max(1, min(MAX_CHUNKS, triton.cdiv(pixels, 32)))
    chunk = triton.cdiv(pixels, chunks)
    bt = min(TAP_BLOCK, triton.next_power_of_2(KH * KW))
    bc = 32 if channels_last(x) else 8
    dwp = new_empty(chunks, C, KH * KW, dtype=torch.float32, device=x.device)
    dbp = new_empty(chunks, C, dtype=torch.float32, device=x.device)
    _dw_dweight_kernel[(chunks, triton.cdiv(KH * KW, bt), triton.cdiv(C, bc))](
        dy, x, dwp, dbp, C, H, W, OH, OW, KH, KW, pixels, chunk, *conv, *dy.stride(), *x.stride(),
        BLOCK_T=bt, BLOCK_C=bc, num_warps=4)
    dbias = dbp.sum(0).to(x.dtype) if has_bias else None
    return dx, dwp.sum(0).view(C, KH, KW).to(weight.dtype), dbias
