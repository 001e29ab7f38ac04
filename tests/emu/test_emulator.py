"""Unit checks of the CUDA CPU emulation layer itself: fp16/bf16 conversions against torch, the
thread/block coordinates of 3-D launches, dynamic shared memory, launch-configuration errors and
compile-time rejection of unsupported CUDA features."""
import subprocess

import pytest
import torch

from emu_build import emu_cflags, emu_include_dirs


# --------------------------------------------------------------------------- conversions
def _floats_around_16bit_grid(to16: torch.dtype) -> torch.Tensor:
    """Every value of the 16-bit format, the midpoints between neighbours (ties) and the floats one
    ulp either side of them, subnormals, overflow thresholds, infinities, NaN and random floats."""
    grid = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(to16).float()
    grid = grid[torch.isfinite(grid)].unique()  # sorted
    mid = (grid[:-1].double() + grid[1:].double()) / 2  # exact in fp32 for these formats
    mid = mid.float()
    bits = mid.view(torch.int32)
    around = torch.cat([(bits - 1).view(torch.float32), (bits + 1).view(torch.float32)])
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 65504.0, 65519.996,
                            65520.0, 65536.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 1.5 * 2.0 ** -25,
                            3.4028235e38, 1e-45, -1e-45, 1.1754944e-38])
    rand_bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (200_000,), dtype=torch.int64,
                              generator=torch.Generator().manual_seed(0)).to(torch.int32)
    return torch.cat([grid, mid, around, special, rand_bits.view(torch.float32)])


@pytest.mark.parametrize("dtype,convert", [(torch.float16, "float_to_half"), (torch.bfloat16, "float_to_bf16")])
def test_float_to_16bit_rounds_to_nearest_even_like_torch(planted, dtype, convert):
    x = _floats_around_16bit_grid(dtype)
    out = torch.empty(x.shape, dtype=torch.int16)
    getattr(planted, convert)(x.data_ptr(), out.data_ptr(), x.numel())
    want = x.to(dtype)
    got = out.view(dtype)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(out[~nan], want.view(torch.int16)[~nan]), \
        f"first mismatch at {x[~nan][out[~nan] != want.view(torch.int16)[~nan]][:5].tolist()}"
    assert (out[nan] == 0x7FFF).all(), "NaN becomes the GPU's canonical NaN"


@pytest.mark.parametrize("dtype,convert", [(torch.float16, "half_to_float"), (torch.bfloat16, "bf16_to_float")])
def test_16bit_to_float_is_exact_like_torch(planted, dtype, convert):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    out = torch.empty(bits.shape, dtype=torch.float32)
    getattr(planted, convert)(bits.data_ptr(), out.data_ptr(), bits.numel())
    want = bits.view(dtype).float()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.int32), want[~nan].view(torch.int32))  # -0.0 and subnormals too


# --------------------------------------------------------------------------- launch geometry
@pytest.mark.parametrize("grid,block", [((3, 2, 2), (4, 3, 2)), ((2, 1, 3), (33, 1, 2)), ((1, 1, 1), (1, 1, 1)),
                                        ((5, 1, 1), (1024, 1, 1))])
def test_thread_and_block_coordinates_cover_3d_launches(planted, grid, block):
    gx, gy, gz = grid
    bx, by, bz = block
    threads, blocks = bx * by * bz, gx * gy * gz
    out = torch.full((blocks * threads, 12), -1, dtype=torch.int32)
    planted.coordinates(out.data_ptr(), *grid, *block)
    want = []
    for blk in range(blocks):  # linear indices, x fastest
        block_idx = (blk % gx, blk // gx % gy, blk // (gx * gy))
        for t in range(threads):
            want.append([t % bx, t // bx % by, t // (bx * by), *block_idx, *block, *grid])
    assert torch.equal(out, torch.tensor(want, dtype=torch.int32))


def test_dynamic_shared_memory(planted):
    x = torch.arange(3 * 96, dtype=torch.float32)
    out = torch.zeros_like(x)
    planted.reverse(x.data_ptr(), out.data_ptr(), 3, 96)
    assert torch.equal(out, x.view(3, 96).flip(1).flatten())


@pytest.mark.parametrize("block", [(1025, 1, 1), (1, 1, 65), (32, 32, 2)])
def test_invalid_launch_configuration_is_a_launch_error(planted, block):
    out = torch.zeros(12, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="launch of coordinates_kernel failed: invalid configuration argument"):
        planted.coordinates(out.data_ptr(), 1, 1, 1, *block)
    assert (out == 0).all(), "nothing ran"


@pytest.mark.parametrize("optin,ok", [(0, False), (64 * 1024, True), (100 * 1024, False)])
def test_dynamic_shared_memory_above_48k_needs_the_opt_in(planted, optin, ok):
    out = torch.zeros(1, dtype=torch.int32)
    bytes_ = 64 * 1024
    if ok:
        planted.big_smem(out.data_ptr(), bytes_, optin)
        assert out.item() == (bytes_ // 4) * (bytes_ // 4 - 1) // 2
    else:  # no opt-in: the launch fails; an opt-in above the device's 99 KiB: the attribute call
        with pytest.raises(RuntimeError, match="invalid argument"):
            planted.big_smem(out.data_ptr(), bytes_, optin)
        assert out.item() == 0


# --------------------------------------------------------------------------- tensor cores (mma.cuh)
@pytest.mark.parametrize("dtype,code", [(torch.float32, 0), (torch.float16, 1), (torch.bfloat16, 2)])
def test_mma_fragments_match_matmul(planted, dtype, code):
    """Small integers: every product and sum is exact in fp32, so any misplaced fragment element
    (layouts of load_a / load_b / load_b_rows / a_from_c) changes the result."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-4, 5, (16, 16), generator=gen).to(dtype) for _ in range(2))
    v = torch.randint(-4, 5, (16, 8), generator=gen).to(dtype)
    s = torch.full((16, 16), float("nan"))
    o = torch.full((16, 8), float("nan"))
    planted.mma_chain(code, a.data_ptr(), b.data_ptr(), v.data_ptr(), s.data_ptr(), o.data_ptr())
    s_ref = a.double() @ b.double().T
    assert torch.equal(s.double(), s_ref)
    assert torch.equal(o.double(), s_ref.to(dtype).double() @ v.double())  # s rounded to dtype


# --------------------------------------------------------------------------- unsupported features
SUPPORTED_BODY = "float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1); __syncthreads(); (void)v;"


@pytest.mark.parametrize("body,poisoned", [
    (SUPPORTED_BODY, None),
    ("float v = __shfl(1.0f, 0); (void)v;", "__shfl"),
    ('asm volatile("bar.sync 0;");', "asm"),
    ("namespace cg = cooperative_groups;", "cooperative_groups"),
    ("cudaDeviceSynchronize();", "cudaDeviceSynchronize"),
    ("float v = tex1Dfetch<float>(0, 0); (void)v;", "tex1Dfetch"),
    ("extern __shared__ float buf[]; buf[0] = 1.0f;", None),
])
def test_unsupported_cuda_features_fail_to_compile(tmp_path, body, poisoned):
    src = tmp_path / "k.cpp"
    src.write_text(f'#include "emu/poison.h"\n__global__ void k() {{ {body} }}\n')
    flags = [f for f in emu_cflags() if f != "-O2"]
    cmd = ["c++", *flags, *(f"-I{d}" for d in emu_include_dirs()), "-fsyntax-only", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if body == SUPPORTED_BODY:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, f"{body!r} compiled"
        if poisoned:
            assert f"attempt to use poisoned \"{poisoned}\"" in proc.stderr, proc.stderr
