// The selective scan CPU kernel for one vector width (included by selective_scan_cpu.cpp, which
// defines kLanes and DLK_CPU_TARGET in a namespace of its own per width; see there).
// A tile's lanes as one GCC vector of kLanes fp32 (one register of the target: 16 with AVX-512, 8
// with AVX2). Written as vector arithmetic (not lane loops left to the auto-vectorizer) so
// accumulators stay in registers.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

// (Inside the target functions GCC 12 turns `Vec{} + x`, `Vec{x, x, ...}` and a shuffle of `Vec{x}`
// into one masked insert per lane; lane 0 set on its own and shuffled to all is two instructions.)
DLK_INLINE Vec splat(float x) {
  Vec v = {};
  v[0] = x;
  return __builtin_shuffle(v, VecI{});
}

// Lane sums of kLanes vectors at once: out[k] = sum over lanes of x[k]. Each fold halves the lanes
// per row and interleaves the rows of its two operands, so the tree of kLanes - 1 folds (2 shuffles
// and an add each, against kLanes - 1 dependent scalar adds per row) leaves row bitrev(k) in lane
// k: the inputs are taken in bit-reversed order to come out in natural order.

template <int H>   // lanes per row after the fold
DLK_INLINE VecI fold_mask(int half) {
  VecI m{};
  for (int k = 0; k < kLanes; ++k) {
    const int block = k / (2 * H) * (2 * H), r = k % (2 * H);
    m[k] = r < H ? block + half * H + r : kLanes + block + half * H + r - H;
  }
  return m;
}

template <int H>
DLK_INLINE Vec fold(const Vec& a, const Vec& b) {
  const VecI lo = fold_mask<H>(0), hi = fold_mask<H>(1);   // folded to constants
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

constexpr int bit_reversed(int k) {
  int r = 0;
  for (int bit = 1; bit < kLanes; bit *= 2) r = r * 2 + (k & bit ? 1 : 0);
  return r;
}

template <int H>   // r[0, 2H) -> r[0, H), pairwise
DLK_INLINE void fold_rows(Vec* r) {
  for (int k = 0; k < H; ++k) r[k] = fold<H>(r[2 * k], r[2 * k + 1]);
  if constexpr (H > 1) fold_rows<H / 2>(r);
}

DLK_INLINE Vec lane_sums(const Vec* x) {
  Vec r[kLanes];
  for (int k = 0; k < kLanes; ++k) r[k] = x[bit_reversed(k)];
  fold_rows<kLanes / 2>(r);
  return r[0];
}

// dst[k] += lane sum of src[k] for k < count (src is read in whole blocks of kLanes).
DLK_INLINE void add_lane_sums(const Vec* src, int64_t count, float* dst) {
  for (int64_t k = 0; k < count; k += kLanes) {
    const Vec s = lane_sums(src + k);
    for (int64_t j = 0; j < std::min<int64_t>(kLanes, count - k); ++j) dst[k + j] += s[j];
  }
}

// exp(x) to ~2 ulp: x = k ln2 + f with |f| <= ln2/2 (Cody-Waite split of ln2), e^f by its Taylor
// polynomial to degree 7, 2^k from the exponent bits. Inputs are clamped to the normal range
// (exp(-87.3) ~ 1.2e-38 stands in for smaller results, which only ever scale a state by it); NaN
// passes the clamps (each compare is false for it). k = round(x / ln2) by truncating a positive
// value: one SIMD conversion, where std::floor is a libm call on baseline x86-64.
DLK_INLINE Vec exp_approx(const Vec& x_in) {
  const Vec lo = splat(-87.3f), hi = splat(88.7f);
  Vec x = lo > x_in ? lo : x_in;
  x = hi < x ? hi : x;
  const VecI ki = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, VecI) - 128;
  const Vec k = __builtin_convertvector(ki, Vec);
  const Vec f = (x - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;
  Vec p = splat(1.f / 5040.f);
  p = p * f + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  return p * (Vec)((ki + 127) << 23);
}

DLK_INLINE Vec sigmoid(const Vec& x) { return 1.f / (1.f + exp_approx(-x)); }

// torch's softplus and its derivative (sigmoid): max(x, 0) + log1p(e) with e = exp(-|x|) <= 1,
// log1p(e) = 2 atanh(s) with s = e / (2 + e) <= 1/3 by its series to s^15 (no cancellation, where
// log(1 + e) would lose e's low bits to the rounding of 1 + e). Past x = 20, where torch returns
// x, the log1p term is below half an ulp of x.
DLK_INLINE void softplus(const Vec& x_in, Vec& out, Vec& slope) {
  const Vec x = x_in, zero = {};   // (out may be x_in)
  const Vec e = exp_approx(x > zero ? -x : x);
  const Vec s = e / (2.f + e), s2 = s * s;
  Vec r = splat(1.f / 15.f);
  r = r * s2 + 1.f / 13.f;
  r = r * s2 + 1.f / 11.f;
  r = r * s2 + 1.f / 9.f;
  r = r * s2 + 1.f / 7.f;
  r = r * s2 + 1.f / 5.f;
  r = r * s2 + 1.f / 3.f;
  r = r * s2 + 1.f;
  out = (x > zero ? x : zero) + 2.f * s * r;
  const Vec inv = 1.f / (1.f + e);
  slope = x > zero ? inv : e * inv;
}

// A tile: channels [d0, d0 + kLanes) of batch b (lanes past `count` are padding: zero inputs).
struct Tile {
  int64_t b, d0, count;
  Vec A[kScanMaxState];   // A[n] per lane
  Vec D, bias;   // D, delta_bias

  Tile(const SelectiveScanFwdParams& p, int64_t b_, int64_t d0_, int64_t count_) : b(b_), d0(d0_), count(count_) {
    for (int64_t n = 0; n < p.N; ++n)
      for (int v = 0; v < kLanes; ++v) A[n][v] = v < count ? p.A[(d0 + v) * p.N + n] : 0.f;
    for (int v = 0; v < kLanes; ++v) {
      D[v] = (p.D && v < count) ? p.D[d0 + v] : 0.f;
      bias[v] = (p.delta_bias && v < count) ? p.delta_bias[d0 + v] : 0.f;
    }
  }
  // Row of lane v's channel in a (batch, dim, X) tensor.
  int64_t row(const SelectiveScanFwdParams& p, int v) const { return b * p.dim + d0 + v; }
};

int64_t group_of(const SelectiveScanFwdParams& p, int64_t d) { return d / (p.dim / p.groups); }

// B or C at time t (time-major, variable) as a broadcast value, or per lane (time-invariant).
struct BC {
  const float* base;   // variable: (L, N) of this (batch, group); invariant: (dim, N)
  Vec inv[kScanMaxState];

  BC(const SelectiveScanFwdParams& p, const void* X, bool var, const Tile& tile) {
    const float* x = static_cast<const float*>(X);
    base = var ? x + (tile.b * p.groups + group_of(p, tile.d0)) * p.L * p.N : x;
    if (!var)
      for (int64_t n = 0; n < p.N; ++n)
        for (int v = 0; v < kLanes; ++v) inv[n][v] = v < tile.count ? x[(tile.d0 + v) * p.N + n] : 0.f;
  }
  template <bool VAR>
  DLK_INLINE Vec at(int64_t t, int64_t n, int64_t N) const {
    if constexpr (VAR) return splat(base[t * N + n]); else return inv[n];
  }
};

// x[k][j] <-> x[j][k] for a kLanes x kLanes block: rounds h = kLanes / 2, ..., 1, each swapping the
// off-diagonal h x h sub-blocks of every pair of rows k, k + h.
DLK_INLINE VecI swap_mask(int h, bool second) {
  VecI m{};
  for (int j = 0; j < kLanes; ++j) m[j] = (j & h) == 0 ? j + (second ? h : 0) : kLanes + j - (second ? 0 : h);
  return m;
}

template <int H>
DLK_INLINE void swap_blocks(Vec* x) {
  const VecI lo = swap_mask(H, false), hi = swap_mask(H, true);   // folded to constants
  for (int k = 0; k < kLanes; ++k)
    if ((k & H) == 0) {
      const Vec a = x[k], b = x[k + H];
      x[k] = __builtin_shuffle(a, b, lo);
      x[k + H] = __builtin_shuffle(a, b, hi);
    }
}

template <int H = kLanes / 2>
DLK_INLINE void transpose(Vec* x) {
  swap_blocks<H>(x);
  if constexpr (H > 1) transpose<H / 2>(x);
}

DLK_INLINE Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

DLK_INLINE void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof(v)); }

// (rows of `src` for the tile's lanes, steps [t0, t1)) -> dst[i][lane]; padding lanes/steps 0.
// A whole tile and chunk goes by kLanes x kLanes transposes; a partial one element by element (through
// float pointers: GCC vectors alias their element type).
DLK_INLINE void gather(const float* src, const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0, int64_t t1,
            Vec* dst) {
  if (tile.count == kLanes && t1 - t0 == kScanChunk) {
    const float* r = src + tile.row(p, 0) * p.L + t0;
    for (int i = 0; i < kScanChunk; i += kLanes) {
      for (int v = 0; v < kLanes; ++v) dst[i + v] = load(r + v * p.L + i);
      transpose(dst + i);
    }
    return;
  }
  float* d = reinterpret_cast<float*>(dst);
  for (int v = 0; v < kLanes; ++v) {
    const float* r = v < tile.count ? src + tile.row(p, v) * p.L : nullptr;
    for (int64_t i = 0; i < kScanChunk; ++i) d[i * kLanes + v] = (r && t0 + i < t1) ? r[t0 + i] : 0.f;
  }
}

// The inverse of gather for the tile's lanes and steps [t0, t1) (src is overwritten).
DLK_INLINE void scatter(Vec* src, const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0, int64_t t1, float* dst) {
  if (tile.count == kLanes && t1 - t0 == kScanChunk) {
    float* r = dst + tile.row(p, 0) * p.L + t0;
    for (int i = 0; i < kScanChunk; i += kLanes) {
      transpose(src + i);
      for (int v = 0; v < kLanes; ++v) store(r + v * p.L + i, src[i + v]);
    }
    return;
  }
  const float* s = reinterpret_cast<const float*>(src);
  for (int v = 0; v < tile.count; ++v) {
    float* r = dst + tile.row(p, v) * p.L;
    for (int64_t t = t0; t < t1; ++t) r[t] = s[(t - t0) * kLanes + v];
  }
}

// One chunk's inputs, transposed to (step, lane): the step sizes dt (delta + delta_bias, softplus'd
// when asked) and d dt / d delta; reset[i]: step i starts a new sequence (its decay is 0; the
// tile's lanes share one batch row, so one flag per step).
struct ChunkIn {
  Vec dt[kScanChunk], dt_slope[kScanChunk], u[kScanChunk], z[kScanChunk];
  bool reset[kScanChunk];
};

DLK_INLINE void load_chunk(const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0, int64_t t1, ChunkIn& in) {
  gather(static_cast<const float*>(p.delta), p, tile, t0, t1, in.dt);
  for (int64_t i = 0; i < kScanChunk; ++i) {
    in.dt[i] += tile.bias;
    if (p.delta_softplus) softplus(in.dt[i], in.dt[i], in.dt_slope[i]);
  }
  gather(static_cast<const float*>(p.u), p, tile, t0, t1, in.u);
  if (p.z) gather(static_cast<const float*>(p.z), p, tile, t0, t1, in.z);
  const int32_t* seq = p.seq_idx ? p.seq_idx + tile.b * p.L : nullptr;
  for (int64_t i = 0; i < kScanChunk; ++i) {
    const int64_t t = t0 + i;
    in.reset[i] = seq && t > 0 && t < t1 && seq[t] != seq[t - 1];
  }
}

// The initial state of the tile's lanes (zero without h0).
DLK_INLINE void initial_state(const SelectiveScanFwdParams& p, const Tile& tile, Vec* h) {
  for (int64_t n = 0; n < p.N; ++n)
    for (int v = 0; v < kLanes; ++v) h[n][v] = (p.h0 && v < tile.count) ? p.h0[tile.row(p, v) * p.N + n] : 0.f;
}

// Steps [t0, t1) from state h[N] (updated). y[i]: pre-gate outputs; hs/as: every state and decay,
// (kScanChunk, N), when STORE.
template <bool VB, bool VC, bool STORE>
DLK_INLINE void scan_chunk(const SelectiveScanFwdParams& p, const Tile& tile, const BC& Bx, const BC& Cx,
                           const ChunkIn& in, int64_t t0, int64_t t1, Vec* h, Vec* y, Vec* hs, Vec* as) {
  const int64_t N = p.N;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = t - t0;
    const Vec dt = in.dt[i], dtu = dt * in.u[i];
    const bool reset = in.reset[i];
    Vec acc = tile.D * in.u[i];
    for (int64_t n = 0; n < N; ++n) {
      const Vec a = reset ? Vec{} : exp_approx(dt * tile.A[n]);
      const Vec hn = a * h[n] + dtu * Bx.at<VB>(t, n, N);
      h[n] = hn;
      acc += Cx.at<VC>(t, n, N) * hn;
      if constexpr (STORE) {
        hs[i * N + n] = hn;
        as[i * N + n] = a;
      }
    }
    y[i] = acc;
  }
}

template <bool VB, bool VC>
DLK_INLINE void fwd_tile(const SelectiveScanFwdParams& p, const Tile& tile) {
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const BC Bx(p, p.B, p.variable_B, tile), Cx(p, p.C, p.variable_C, tile);
  Vec h[kScanMaxState];
  initial_state(p, tile, h);
  ChunkIn in;
  Vec y[kScanChunk];
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
    load_chunk(p, tile, t0, t1, in);
    scan_chunk<VB, VC, false>(p, tile, Bx, Cx, in, t0, t1, h, y, nullptr, nullptr);
    if (p.z)
      for (int64_t i = 0; i < kScanChunk; ++i) y[i] *= in.z[i] * sigmoid(in.z[i]);
    scatter(y, p, tile, t0, t1, static_cast<float*>(p.out));
    for (int v = 0; v < tile.count; ++v)
      for (int64_t n = 0; n < p.N; ++n) p.states[(tile.row(p, v) * n_chunks + c) * p.N + n] = h[n][v];
  }
}

// The backward of one tile. dB/dC: the task's (L, N) partials when variable, else the
// (batch, dim, N) rows of the output.
// Per-thread (kScanChunk, N) buffers of the backward: the chunk's states and decays, and its
// per-lane dB/dC terms (summed over lanes into the task's partial at the chunk's end). On the heap:
// GCC recomputes the address of a thread_local array (a __tls_get_addr call) inside the loops.
struct BwdScratch {
  static constexpr int64_t kSize = kScanChunk * kScanMaxState + kLanes;   // + a whole block for add_lane_sums
  Vec hs[kSize], as[kSize], dBc[kSize], dCc[kSize];
};

template <bool VB, bool VC>
DLK_INLINE void bwd_tile(const SelectiveScanBwdParams& q, const Tile& tile, float* dB, float* dC,
                         BwdScratch& scratch) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t N = p.N;
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const BC Bx(p, p.B, p.variable_B, tile), Cx(p, p.C, p.variable_C, tile);
  Vec* const hs = scratch.hs;
  Vec* const as = scratch.as;
  Vec* const dBc = scratch.dBc;
  Vec* const dCc = scratch.dCc;
  Vec g[kScanMaxState], dA[kScanMaxState] = {}, h[kScanMaxState], h0[kScanMaxState];
  Vec dBi[kScanMaxState] = {}, dCi[kScanMaxState] = {};
  Vec dD = {};
  ChunkIn in;
  Vec y[kScanChunk], dout[kScanChunk], du[kScanChunk], ddt[kScanChunk], dz[kScanChunk];
  for (int64_t n = 0; n < N; ++n)
    for (int v = 0; v < kLanes; ++v) g[n][v] = (q.dlast && v < tile.count) ? q.dlast[tile.row(p, v) * N + n] : 0.f;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
    if (c == 0) {
      initial_state(p, tile, h0);
    } else {
      for (int64_t n = 0; n < N; ++n)
        for (int v = 0; v < kLanes; ++v)
          h0[n][v] = v < tile.count ? p.states[(tile.row(p, v) * n_chunks + c - 1) * N + n] : 0.f;
    }
    std::memcpy(h, h0, sizeof(Vec) * N);
    load_chunk(p, tile, t0, t1, in);
    gather(static_cast<const float*>(q.dout), p, tile, t0, t1, dout);
    scan_chunk<VB, VC, true>(p, tile, Bx, Cx, in, t0, t1, h, y, hs, as);
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const Vec dt = in.dt[i], u = in.u[i], dtu = dt * u;
      Vec dy = dout[i];
      if (p.z) {
        const Vec zt = in.z[i], s = sigmoid(zt);
        dz[i] = dy * y[i] * s * (1.f + zt * (1.f - s));
        dy *= zt * s;
      }
      dD += dy * u;
      // g_t = C dy + a_{t+1} g_{t+1}; ddt = sum_n g A a h_{t-1} + u sum_n g B
      Vec ddt_a = {}, gB = {};
      Vec* __restrict__ dBt = dBc + i * N;
      Vec* __restrict__ dCt = dCc + i * N;
      const Vec* ht = hs + i * N;
      const Vec* hp = i > 0 ? hs + (i - 1) * N : h0;
      const Vec* at = as + i * N;
      for (int64_t n = 0; n < N; ++n) {
        const Vec b = Bx.at<VB>(t, n, N);
        const Vec gn = g[n] + Cx.at<VC>(t, n, N) * dy;
        const Vec gah = gn * (at[n] * hp[n]);
        ddt_a += tile.A[n] * gah;
        dA[n] += dt * gah;
        gB += gn * b;
        if (VB) dBt[n] = gn * dtu; else dBi[n] += gn * dtu;
        if (VC) dCt[n] = dy * ht[n]; else dCi[n] += dy * ht[n];
        g[n] = gn * at[n];
      }
      du[i] = dt * gB + tile.D * dy;
      ddt[i] = (ddt_a + u * gB) * (p.delta_softplus ? in.dt_slope[i] : splat(1.f));
    }
    if (VB) add_lane_sums(dBc, (t1 - t0) * N, dB + t0 * N);
    if (VC) add_lane_sums(dCc, (t1 - t0) * N, dC + t0 * N);
    scatter(du, p, tile, t0, t1, static_cast<float*>(q.du));
    scatter(ddt, p, tile, t0, t1, static_cast<float*>(q.ddelta));
    if (p.z) scatter(dz, p, tile, t0, t1, static_cast<float*>(q.dz));
  }
  for (int v = 0; v < tile.count; ++v) {
    const int64_t row = tile.row(p, v);
    for (int64_t n = 0; n < N; ++n) {
      if (q.dh0) q.dh0[row * N + n] = g[n][v];   // a_0 g_0 after the walk back
      q.dA[row * N + n] = dA[n][v];
      if (!VB) dB[row * N + n] = dBi[n][v];
      if (!VC) dC[row * N + n] = dCi[n][v];
    }
    if (q.dD) q.dD[row] = dD[v];
  }
}

// Tiles of kLanes channels that stay inside one group: tile k of (batch, group) order.
int64_t tiles_per_group(const SelectiveScanFwdParams& p) {
  return (p.dim / p.groups + kLanes - 1) / kLanes;
}

Tile make_tile(const SelectiveScanFwdParams& p, int64_t index) {
  const int64_t tpg = tiles_per_group(p), dpg = p.dim / p.groups;
  const int64_t k = index % tpg, bg = index / tpg;
  const int64_t b = bg / p.groups, g = bg % p.groups;
  return Tile(p, b, g * dpg + k * kLanes, std::min<int64_t>(kLanes, dpg - k * kLanes));
}

template <bool VB, bool VC>
DLK_INLINE void fwd_range(const SelectiveScanFwdParams& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) fwd_tile<VB, VC>(p, make_tile(p, i));
}

// Task (b, g, blk): a contiguous run of the group's tiles, owning an (L, N) partial each for
// variable dB and dC.
template <bool VB, bool VC>
DLK_INLINE void bwd_range(const SelectiveScanBwdParams& q, int64_t begin, int64_t end) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t tpg = tiles_per_group(p);
  const int64_t per_task = (tpg + q.n_dblocks - 1) / q.n_dblocks;
  const int64_t part = p.L * p.N;
  static thread_local std::unique_ptr<BwdScratch> tls;
  if (!tls) tls = std::make_unique<BwdScratch>();
  BwdScratch& scratch = *tls;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t blk = task % q.n_dblocks, bg = task / q.n_dblocks;
    float* dB = VB ? q.dB + task * part : q.dB;
    float* dC = VC ? q.dC + task * part : q.dC;
    if (VB) std::fill(dB, dB + part, 0.f);
    if (VC) std::fill(dC, dC + part, 0.f);
    for (int64_t k = blk * per_task; k < std::min(tpg, (blk + 1) * per_task); ++k)
      bwd_tile<VB, VC>(q, make_tile(p, bg * tpg + k), dB, dC, scratch);
  }
}

// The cloned entry points, one per (variable B, variable C): a template or a lambda would not be
// cloned, and the hot loops must be inlined into the clone to get its instruction set.
#define DLK_SCAN_ENTRIES(VB, VC)                                                                  \
  DLK_CPU_TARGET void fwd_##VB##_##VC(void* ctx, int64_t begin, int64_t end) {                    \
    fwd_range<VB, VC>(*static_cast<const SelectiveScanFwdParams*>(ctx), begin, end);              \
  }                                                                                               \
  DLK_CPU_TARGET void bwd_##VB##_##VC(void* ctx, int64_t begin, int64_t end) {                    \
    bwd_range<VB, VC>(*static_cast<const SelectiveScanBwdParams*>(ctx), begin, end);              \
  }
DLK_SCAN_ENTRIES(true, true)
DLK_SCAN_ENTRIES(true, false)
DLK_SCAN_ENTRIES(false, true)
DLK_SCAN_ENTRIES(false, false)
#undef DLK_SCAN_ENTRIES

using Body = void (*)(void*, int64_t, int64_t);
Body pick(bool vb, bool vc, Body tt, Body tf, Body ft, Body ff) { return vb ? (vc ? tt : tf) : (vc ? ft : ff); }

void fwd(const SelectiveScanFwdParams& p, ParallelFor parallel_for) {
  const Body body = pick(p.variable_B, p.variable_C, fwd_true_true, fwd_true_false, fwd_false_true, fwd_false_false);
  parallel_for(p.batch * p.groups * tiles_per_group(p), const_cast<SelectiveScanFwdParams*>(&p), body);
}

void bwd(const SelectiveScanBwdParams& q, ParallelFor parallel_for) {
  check(q.n_dblocks >= 1 && q.n_dblocks <= tiles_per_group(q.fwd), "n_dblocks must be in [1, tiles per group]");
  const Body body = pick(q.fwd.variable_B, q.fwd.variable_C, bwd_true_true, bwd_true_false, bwd_false_true,
                        bwd_false_false);
  parallel_for(q.fwd.batch * q.fwd.groups * q.n_dblocks, const_cast<SelectiveScanBwdParams*>(&q), body);
}
