"""Independent check of the tensor-core fragment layouts (common/mma.cuh) and of the emulated
ldmatrix / cp.async (common/mma.cuh, common/async_copy.cuh).

The emulation of mma_m16n8k16 inverts the same (lane, element) formulas the fragment loads use, so a
wrong layout would agree with itself in every kernel test. Here the layouts come from a second
source: the tables of the PTX ISA, written out below as lists of (lane, element) -> (row, column)
in the ISA's own terms (sections "Matrix Fragments for mma.m16n8k16 with floating point type" and
"Warp-level matrix load instruction: ldmatrix"), not from mma.cuh. Every probe writes what each
lane of a warp holds, and the test compares it element by element with those tables. Tile values
are distinct small integers (exact in fp16 and bf16), so one misplaced element fails the test.
"""
import pytest
import torch

DTYPES = [(torch.float32, 0), (torch.float16, 1), (torch.bfloat16, 2)]
HALF_DTYPES = DTYPES[1:]
LD = 24  # the probes' tile leading dimension: 16 columns + 8 of padding (never read)


# --------------------------------------------------------------------------- the PTX ISA tables
# "Matrix Fragments for mma.m16n8k16 with floating point type", .f16/.bf16 multiplicands and the
# .f32 accumulator. groupID = laneid >> 2, threadID_in_group = laneid % 4.
def _ptx_a(lane: int, i: int) -> tuple[int, int]:
    """A (16 x 16, row-major .row), element a_i of the lane: (row, col)."""
    group, tig = lane >> 2, lane % 4
    row = group if (0 <= i < 2 or 4 <= i < 6) else group + 8
    col = tig * 2 + (i & 1) if i < 4 else tig * 2 + (i & 1) + 8
    return row, col


def _ptx_b(lane: int, i: int) -> tuple[int, int]:
    """B (16 x 8, .col), element b_i of the lane: (row = k, col = n)."""
    group, tig = lane >> 2, lane % 4
    row = tig * 2 + (i & 1) if i < 2 else tig * 2 + (i & 1) + 8
    return row, group


def _ptx_c(lane: int, i: int) -> tuple[int, int]:
    """C/D (16 x 8, .f32), element c_i of the lane: (row, col)."""
    group, tig = lane >> 2, lane % 4
    row = group if i < 2 else group + 8
    return row, tig * 2 + (i & 1)


# "Warp-level matrix load instruction: ldmatrix", .m8n8 .x4 .b16: threads 8m..8m+7 give the
# addresses of rows 0..7 of matrix m; destination register m of each thread holds a fragment of
# matrix m. Figure "ldmatrix fragment layout for one 8x8 Matrix with 16-bit elements": a group of
# four consecutive threads loads one row, each thread two consecutive elements (low half first).
# .trans: the matrix is read column-major, so "row" above is a column of the stored matrix.
def _ptx_ldmatrix(lane: int, reg: int, half: int, trans: bool) -> tuple[int, int, int]:
    """(address lane, element within that lane's 8-element row) of register `reg`, half `half`."""
    r, c = lane // 4, 2 * (lane % 4) + half  # position in matrix `reg` as loaded
    if trans:
        r, c = c, r  # column-major: stored row 2 (l % 4) + half, element l / 4 of it
    return 8 * reg + r, c


# --------------------------------------------------------------------------- helpers
def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _tile(dtype: torch.dtype) -> torch.Tensor:
    """(16, LD): element (r, c) = 16 r + c (0..255, exact in bf16), padding columns -1."""
    tile = torch.full((16, LD), -1.0)
    tile[:, :16] = torch.arange(256, dtype=torch.float32).view(16, 16)
    return tile.to(dtype).contiguous()


def _probe(planted, dtype, code, probe) -> torch.Tensor:
    tile = _tile(dtype)
    out = torch.full((32, 8), float("nan"))
    planted.fragment_load(code, probe, _ptr(tile), 16, LD, _ptr(out))
    return out


def _expected(entries) -> torch.Tensor:
    """(32, 8) from {(lane, slot): (row, col)} as the tile's value 16 row + col (-2: no slot)."""
    out = torch.full((32, 8), -2.0)
    for (lane, slot), (row, col) in entries.items():
        out[lane, slot] = 16 * row + col
    return out


LANES = range(32)


# --------------------------------------------------------------------------- fragment loads
@pytest.mark.parametrize("probe,name", [(0, "load_a"), (3, "load_a_x4")])
@pytest.mark.parametrize("dtype,code", DTYPES)
def test_a_fragment_loads_follow_the_ptx_table(planted, dtype, code, probe, name):
    """A = tile[0:16, 0:16] (row-major), lane l element i = A[row, col] of the ISA's A table."""
    want = _expected({(lane, i): _ptx_a(lane, i) for lane in LANES for i in range(8)})
    got = _probe(planted, dtype, code, probe)
    assert torch.equal(got, want), f"{name}: lanes differ at {(got != want).nonzero().tolist()[:8]}"


@pytest.mark.parametrize("dtype,code", DTYPES)
def test_b_fragment_of_a_transposed_tile_follows_the_ptx_table(planted, dtype, code):
    """load_b: B = tileᵀ (B[k][n] = tile[n][k]: K in Q·Kᵀ)."""
    want = {}
    for lane in LANES:
        for i in range(4):
            k, n = _ptx_b(lane, i)
            want[(lane, i)] = (n, k)
    assert torch.equal(_probe(planted, dtype, code, 1), _expected(want))


@pytest.mark.parametrize("dtype,code", DTYPES)
def test_b_fragment_of_tile_rows_follows_the_ptx_table(planted, dtype, code):
    """load_b_rows: B = tile[0:16, 0:8] (V in P·V)."""
    want = {(lane, i): _ptx_b(lane, i) for lane in LANES for i in range(4)}
    assert torch.equal(_probe(planted, dtype, code, 2), _expected(want))


@pytest.mark.parametrize("dtype,code", DTYPES)
def test_b_pair_of_a_transposed_tile_follows_the_ptx_table(planted, dtype, code):
    """load_b_x4 (one ldmatrix.x4 for 16-bit types): the B fragments of n-tiles j = 0, 1 of
    B = tile[0:16, 0:16]ᵀ, B_j[k][n] = tile[8 j + n][k]; slot 4 j + i."""
    want = {}
    for lane in LANES:
        for j in range(2):
            for i in range(4):
                k, n = _ptx_b(lane, i)
                want[(lane, 4 * j + i)] = (8 * j + n, k)
    assert torch.equal(_probe(planted, dtype, code, 4), _expected(want))


@pytest.mark.parametrize("dtype,code", DTYPES)
def test_b_pair_of_tile_rows_follows_the_ptx_table(planted, dtype, code):
    """load_b_rows_x4 (ldmatrix.x4.trans for 16-bit types): B_j[k][n] = tile[k][8 j + n]."""
    want = {}
    for lane in LANES:
        for j in range(2):
            for i in range(4):
                k, n = _ptx_b(lane, i)
                want[(lane, 4 * j + i)] = (k, 8 * j + n)
    assert torch.equal(_probe(planted, dtype, code, 5), _expected(want))


# --------------------------------------------------------------------------- ldmatrix itself
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("dtype,code", HALF_DTYPES)
def test_ldmatrix_x4_follows_the_ptx_table(planted, dtype, code, trans):
    """Each lane addresses its own row, anywhere in shared memory (a random permutation of 32
    16-byte rows with gaps), as the ISA allows: register m of lane l must hold the values the table
    assigns from the rows of lanes 8m..8m+7."""
    gen = torch.Generator().manual_seed(1 + trans)
    slots = torch.randperm(40, generator=gen)[:32]  # 40 rows of 8 in memory, 32 of them addressed
    src = torch.full((40 * 8,), -1.0)
    for lane in LANES:
        src[slots[lane] * 8: slots[lane] * 8 + 8] = torch.arange(8) + 8 * lane  # lane's row: 8l..8l+7
    src = src.to(dtype)
    offsets = (slots * 8).to(torch.int32)
    out = torch.full((32, 4, 2), float("nan"))
    planted.ldmatrix(code, trans, _ptr(src), src.numel(), _ptr(offsets), _ptr(out))
    want = torch.empty(32, 4, 2)
    for lane in LANES:
        for reg in range(4):
            for half in range(2):
                addr_lane, elem = _ptx_ldmatrix(lane, reg, half, trans)
                want[lane, reg, half] = 8 * addr_lane + elem
    assert torch.equal(out, want)


# --------------------------------------------------------------------------- the product and C
@pytest.mark.parametrize("dtype,code", DTYPES)
def test_mma_on_ptx_fragments_gives_the_ptx_accumulator(planted, dtype, code):
    """Fragments built in Python from A, B and C through the ISA tables; D must come back in the
    ISA's C layout as A·B + C (small integers: exact in fp32)."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(-4, 5, (16, 16), generator=gen).float()
    b = torch.randint(-4, 5, (16, 8), generator=gen).float()
    c = torch.randint(-50, 51, (16, 8), generator=gen).float()
    fa, fb, fc = torch.empty(32, 8), torch.empty(32, 4), torch.empty(32, 4)
    for lane in LANES:
        for i in range(8):
            fa[lane, i] = a[_ptx_a(lane, i)]
        for i in range(4):
            fb[lane, i] = b[_ptx_b(lane, i)]
            fc[lane, i] = c[_ptx_c(lane, i)]
    fd = torch.full((32, 4), float("nan"))
    planted.mma_fragments(code, _ptr(fa), _ptr(fb), _ptr(fc), _ptr(fd))
    d = a.double() @ b.double() + c.double()
    want = torch.tensor([[d[_ptx_c(lane, i)] for i in range(4)] for lane in LANES])
    assert torch.equal(fd.double(), want)


@pytest.mark.parametrize("dtype,code", DTYPES)
def test_a_from_c_puts_two_accumulators_side_by_side(planted, dtype, code):
    """a_from_c(lo, hi): the A fragment (ISA table) of [C_lo | C_hi] (16 x 16) from the two C
    fragments (ISA table), as FlashAttention reuses P."""
    s = torch.arange(256, dtype=torch.float32).view(16, 16)
    lo = torch.tensor([[s[_ptx_c(lane, i)] for i in range(4)] for lane in LANES])
    hi = torch.tensor([[s[:, 8:][_ptx_c(lane, i)] for i in range(4)] for lane in LANES])
    out = torch.full((32, 8), float("nan"))
    planted.a_from_c(code, _ptr(lo), _ptr(hi), _ptr(out))
    want = torch.tensor([[s[_ptx_a(lane, i)] for i in range(8)] for lane in LANES])
    assert torch.equal(out, want)


# --------------------------------------------------------------------------- cp.async
@pytest.mark.parametrize("wait_groups", [0, 1])
def test_async_copies_land_at_their_wait_group(planted, wait_groups):
    """Two committed groups (a 16-byte copy, then a zero fill): wait_group 0 completes both;
    wait_group 1 leaves the newest in flight, so its destination still holds the shared-memory
    poison (NaN), as reading it on the GPU would be a race."""
    src = torch.arange(128, dtype=torch.float32).view(32, 4) + 1
    out = torch.full((32, 8), -7.0)
    planted.async_copy(_ptr(src), wait_groups, _ptr(out))
    assert torch.equal(out[:, :4], src)
    if wait_groups == 0:
        assert torch.equal(out[:, 4:], torch.zeros(32, 4))
    else:
        assert torch.isnan(out[:, 4:]).all()
