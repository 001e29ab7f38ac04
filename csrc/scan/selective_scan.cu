// Selective scan forward and backward kernels and their launchers (math: selective_scan.h).
//
// Block-level chunked scan. One block owns one (batch, channel) row and walks L in chunks of
// blockDim.x * K steps (blockDim.x: 32..128, fewer warps for short rows; K = 16 forward, 4
// backward, so at most 2048 / 512 steps). Each thread holds K consecutive steps in registers (u,
// dt, z, dout and, per state n, B and C; vector loads when the row is aligned). For each state n in
// turn the recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(dt_t A_n), b_t = dt_t B_t u_t) is an
// affine map per step: a thread composes its K maps, the block scans the thread maps (warp shuffles,
// then the warp totals through shared memory) and the thread replays its items from the
// resulting state. The state carried from chunk to chunk lives in shared memory, one float per n
// (state kept on chip); y_t accumulates over n in registers.
//
// The forward writes the state at every kScanChunk = 64 steps (the (batch, dim, n_chunks, N)
// layout the Triton and CPU kernels share; 64 divides the block's chunk). The backward walks the
// block chunks from the last: for each n it recomputes the chunk's states from the stored state
// before the chunk (a forward block scan), then scans the adjoint x_t = a_t (C_t dy_t + x_{t+1})
// backwards (reverse block scan; x carried between chunks in shared memory, started from dlast).
// With z it first recomputes y (one more forward pass over n) for dz and dy.
// Initial state and packed sequences (selective_scan.h): h0 enters as the state before chunk 0;
// a step that starts a sequence gets a = 0 (a K-bit mask per thread, `resets`), which the block
// scans compose like any other map (a segmented scan without a separate flag); the backward's
// adjoint leaving chunk 0, a_0 g_0, is dh0.
// Reductions: du and ddelta sum over n in registers; dA and time-invariant dB/dC sum over t per
// warp (shuffles) into per-warp shared accumulators, written once per (row, n) at the end; dD
// and ddelta_bias by block_sum2. Variable dB/dC sum over the channels of a group, which other
// blocks own: fp32 atomicAdd into the zeroed (batch, G, N, L) buffer, one per (row, n, t), after an
// exchange through shared memory so that a warp's atomics hit consecutive steps (their
// last bits may differ run to run; a per-channel partial buffer would cost dim/G times the memory).
#include "scan/selective_scan.h"

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

// Consecutive steps per thread: the forward amortizes each block scan over 16 (as mamba-ssm); the
// backward holds ~3x more per step (adjoint, hprev, partial sums) and keeps 4, so it stays at
// <= 128 registers, 4 blocks per SM (a (2, 256) batch x dim grid in one wave on 132 SMs).
constexpr int kFwdItems = 16;
constexpr int kBwdItems = 4;
constexpr int kMaxThreads = 128;                // the block's chunk: at most 512 steps
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert((32 * kFwdItems) % kScanChunk == 0 && (32 * kBwdItems) % kScanChunk == 0,
              "every block chunk starts right after a stored state");


// Shared-memory index of element e of a per-step buffer: one pad word per 32, so that a warp
// writing K consecutive steps per thread (stride K) and reading consecutive steps is conflict-free.
__host__ __device__ constexpr int padded(int e) { return e + e / 32; }

// The map h -> a h + b.
struct Affine {
  float a, b;
};

// `first`, then `second`.
__device__ __forceinline__ Affine then(Affine first, Affine second) {
  return {second.a * first.a, second.a * first.b + second.b};
}

// The value of the lane `delta` before this one in scan order (kReverse: higher lanes come first).
template <bool kReverse>
__device__ __forceinline__ float shfl_before(float v, unsigned delta) {
  if constexpr (kReverse) {
    return __shfl_down_sync(kFullMask, v, delta);
  } else {
    return __shfl_up_sync(kFullMask, v, delta);
  }
}

// Block-wide exclusive scan of the threads' maps in thread order (kReverse: from the last thread
// to the first). Returns the composition of the maps of the threads before this one, and in
// `total` that of all threads (bitwise identical in every thread). Every thread of the block
// calls it; `tot` is used alternately by consecutive calls (`phase`), so one barrier suffices,
// and that barrier also orders the caller's shared-memory writes before it against reads after.
template <bool kReverse>
__device__ __forceinline__ Affine block_exclusive_scan(Affine x, Affine (&tot)[2][kMaxWarps], int& phase,
                                                       Affine& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  const int first_lane = kReverse ? 31 : 0;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const Affine prev{shfl_before<kReverse>(x.a, offset), shfl_before<kReverse>(x.b, offset)};
    if (kReverse ? lane + offset < 32 : lane >= offset) x = then(prev, x);
  }
  Affine before{shfl_before<kReverse>(x.a, 1), shfl_before<kReverse>(x.b, 1)};
  if (lane == first_lane) before = {1.f, 0.f};
  Affine* warp_total = tot[phase];
  phase ^= 1;
  if (lane == 31 - first_lane) warp_total[warp] = x;
  __syncthreads();
  Affine warps_before{1.f, 0.f};
  total = {1.f, 0.f};
  for (int i = 0; i < num_warps; ++i) {
    const int w = kReverse ? num_warps - 1 - i : i;
    if (w == warp) warps_before = total;
    total = then(total, warp_total[w]);
  }
  return then(warps_before, before);
}

// K values of a row from step t, as fp32, zeros past L (`vec`: aligned vector accesses).
template <typename T, int K>
__device__ __forceinline__ void load_items(const T* row, int64_t stride, int64_t t, int64_t L, bool vec,
                                           float (&v)[K]) {
  if (vec && t + K <= L) {
    load<T, K>(row + t, v);
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = t + k < L ? to_float(row[(t + k) * stride]) : 0.f;
}

template <typename T, int K>
__device__ __forceinline__ void store_items(T* row, int64_t t, int64_t L, bool vec, const float (&v)[K]) {
  if (vec && t + K <= L) {
    store<T, K>(row + t, v);
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (t + k < L) row[t + k] = from_float<T>(v[k]);
}

// One block's row (b, d) and its per-step inputs, K steps per thread.
template <typename T, int K>
struct ScanRow {
  const SelectiveScanFwdParams& p;
  int64_t row, d, off, bc_off, n_stored;
  float D, bias;
  bool vec;
  const int32_t* seq;   // this row's sequence ids, or null

  __device__ ScanRow(const SelectiveScanFwdParams& params, bool vec_ok) : p(params), vec(vec_ok) {
    row = blockIdx.x;
    d = row % p.dim;
    off = row * p.L;
    bc_off = ((row / p.dim) * p.groups + d / (p.dim / p.groups)) * p.L * p.N;
    n_stored = (p.L + kScanChunk - 1) / kScanChunk;
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    seq = p.seq_idx ? p.seq_idx + (row / p.dim) * p.L : nullptr;
  }

  // Bit k: step t + k starts a new sequence (its decay is 0); no bits without seq_idx.
  __device__ uint32_t resets(int64_t t) const {
    uint32_t mask = 0;
    if (seq) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t tk = t + k;
        if (tk > 0 && tk < p.L && seq[tk] != seq[tk - 1]) mask |= 1u << k;
      }
    }
    return mask;
  }

  // The initial state of state n (0 without h0).
  __device__ float initial(int64_t n) const { return p.h0 ? p.h0[row * p.N + n] : 0.f; }

  // u, the raw dt (delta + bias) and dt (softplus'd if asked; 0 past L: the identity step).
  __device__ void load_steps(int64_t t, float (&u)[K], float (&raw)[K], float (&dt)[K]) const {
    load_items(static_cast<const T*>(p.u) + off, 1, t, p.L, vec, u);
    load_items(static_cast<const T*>(p.delta) + off, 1, t, p.L, vec, raw);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      raw[k] += bias;
      dt[k] = t + k >= p.L ? 0.f : p.delta_softplus ? softplus_approx(raw[k]) : raw[k];
    }
  }

  // B or C of state n at steps t.. (time-invariant: the channel's value at every step).
  __device__ void load_bc(const void* X, bool variable, int64_t n, int64_t t, float (&v)[K]) const {
    const T* x = static_cast<const T*>(X);
    if (variable) {
      load_items(x + bc_off + n * p.bc_stride_n, p.bc_stride_l, t, p.L, vec, v);
    } else {
      const float c = to_float(x[d * p.N + n]);
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = c;
    }
  }

  // The maps of this thread's steps for state n: a_t = exp(dt A) (0 where `resets` has bit k),
  // b_t = dt B u.
  __device__ Affine steps(float A, const float (&dt)[K], const float (&u)[K], const float (&Bv)[K],
                          uint32_t resets, Affine (&step)[K]) const {
    Affine mine{1.f, 0.f};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      // exp(Δ·A) per step and state, the scan's one transcendental: __expf (FMUL + MUFU.EX2, as mamba-ssm)
      step[k] = {(resets >> k) & 1u ? 0.f : __expf(dt[k] * A), dt[k] * Bv[k] * u[k]};
      mine = then(mine, step[k]);
    }
    return mine;
  }

  // The stored state after step t - 1 (t a multiple of kScanChunk; h0 before step 0).
  __device__ float stored_state_before(int64_t t, int64_t n) const {
    return t == 0 ? initial(n) : p.states[(row * n_stored + t / kScanChunk - 1) * p.N + n];
  }
};

template <typename T, int K = kFwdItems>
__global__ void __launch_bounds__(kMaxThreads)
selective_scan_fwd_kernel(const SelectiveScanFwdParams p, bool vec) {
  __shared__ Affine warp_tot[2][kMaxWarps];
  __shared__ float carry[2][kScanMaxState];   // state at the end of the previous chunk, per n
  const ScanRow<T, K> r(p, vec);
  const int64_t chunk = int64_t(blockDim.x) * K;
  int phase = 0;
  for (int64_t t0 = 0, c = 0; t0 < p.L; t0 += chunk, ++c) {
    const int64_t t = t0 + int64_t(threadIdx.x) * K;
    float u[K], raw[K], dt[K], y[K];
    r.load_steps(t, u, raw, dt);
    const uint32_t resets = r.resets(t);
#pragma unroll
    for (int k = 0; k < K; ++k) y[k] = r.D * u[k];
    const float* carry_in = carry[c & 1];
    float* carry_out = carry[(c + 1) & 1];
    for (int64_t n = 0; n < p.N; ++n) {
      float Bv[K], Cv[K];
      r.load_bc(p.B, p.variable_B, n, t, Bv);
      r.load_bc(p.C, p.variable_C, n, t, Cv);
      Affine step[K], total;
      const Affine before = block_exclusive_scan<false>(r.steps(p.A[r.d * p.N + n], dt, u, Bv, resets, step),
                                                        warp_tot, phase, total);
      const float h0 = c == 0 ? r.initial(n) : carry_in[n];   // written before the scan's barrier
      float h = before.a * h0 + before.b;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        h = step[k].a * h + step[k].b;
        y[k] += Cv[k] * h;
        const int64_t tk = t + k;
        if (tk < p.L && (tk % kScanChunk == kScanChunk - 1 || tk == p.L - 1))
          p.states[(r.row * r.n_stored + tk / kScanChunk) * p.N + n] = h;
      }
      if (threadIdx.x == 0) carry_out[n] = total.a * h0 + total.b;
    }
    if (p.z) {
      float z[K];
      load_items(static_cast<const T*>(p.z) + r.off, 1, t, p.L, vec, z);
#pragma unroll
      for (int k = 0; k < K; ++k) y[k] *= z[k] * sigmoid_approx(z[k]);
    }
    store_items(static_cast<T*>(p.out) + r.off, t, p.L, vec, y);
  }
}

// 4 blocks per SM (<= 128 registers): without the bound nvcc took 143 on sm_90a once the packing
// arguments came in (3 blocks per SM).
template <typename T, int K = kBwdItems>
__global__ void __launch_bounds__(kMaxThreads, 4)
selective_scan_bwd_kernel(const SelectiveScanBwdParams q, bool vec) {
  const SelectiveScanFwdParams& p = q.fwd;
  __shared__ Affine warp_tot[2][kMaxWarps];
  __shared__ float carry[2][kScanMaxState];                 // x entering the chunk from the next one
  __shared__ float warp_acc[3][kMaxWarps][kScanMaxState];   // per-warp sums over t: dA, dB, dC
  __shared__ float exchange[2][padded(kMaxThreads * K)];     // variable dB, dC of one (chunk, n)
  const ScanRow<T, K> r(p, vec);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = lane; n < p.N; n += 32)
    for (int i = 0; i < 3; ++i) warp_acc[i][warp][n] = 0.f;   // each warp zeroes and sums its own
  const int64_t chunk = int64_t(blockDim.x) * K, last = (p.L - 1) / chunk;
  const T* dout_row = static_cast<const T*>(q.dout) + r.off;
  float* dB = p.variable_B ? q.dB + r.bc_off : nullptr;
  float* dC = p.variable_C ? q.dC + r.bc_off : nullptr;
  float dD = 0.f, dbias = 0.f;
  int phase = 0;
  for (int64_t c = last; c >= 0; --c) {
    const int64_t t0 = c * chunk, t = t0 + int64_t(threadIdx.x) * K;
    float u[K], raw[K], dt[K], dy[K], Bv[K], Cv[K];
    Affine step[K], total;
    r.load_steps(t, u, raw, dt);
    const uint32_t resets = r.resets(t);
    load_items(dout_row, 1, t, p.L, vec, dy);   // 0 past L
    if (p.z) {   // dz needs y: one more forward pass over n
      float y[K], z[K], dz[K];
#pragma unroll
      for (int k = 0; k < K; ++k) y[k] = r.D * u[k];
      for (int64_t n = 0; n < p.N; ++n) {
        r.load_bc(p.B, p.variable_B, n, t, Bv);
        r.load_bc(p.C, p.variable_C, n, t, Cv);
        const Affine before = block_exclusive_scan<false>(r.steps(p.A[r.d * p.N + n], dt, u, Bv, resets, step),
                                                          warp_tot, phase, total);
        float h = before.a * r.stored_state_before(t0, n) + before.b;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          h = step[k].a * h + step[k].b;
          y[k] += Cv[k] * h;
        }
      }
      load_items(static_cast<const T*>(p.z) + r.off, 1, t, p.L, vec, z);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float s = sigmoid_approx(z[k]);
        dz[k] = dy[k] * y[k] * s * (1.f + z[k] * (1.f - s));
        dy[k] *= z[k] * s;
      }
      store_items(static_cast<T*>(q.dz) + r.off, t, p.L, vec, dz);
    }
    float gB[K] = {}, ddt[K] = {};   // sums over n of g B and of g d(h_t)/d(dt)
    for (int64_t n = 0; n < p.N; ++n) {
      const float A = p.A[r.d * p.N + n];
      r.load_bc(p.B, p.variable_B, n, t, Bv);
      r.load_bc(p.C, p.variable_C, n, t, Cv);
      const Affine before = block_exclusive_scan<false>(r.steps(A, dt, u, Bv, resets, step), warp_tot, phase,
                                                        total);
      float hprev[K];   // the state before each step
      float h = before.a * r.stored_state_before(t0, n) + before.b;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        hprev[k] = h;
        h = step[k].a * h + step[k].b;
      }
      // adjoint: x_t = a_t g_t with g_t = C_t dy_t + x_{t+1}, scanned from the chunk's end
      Affine mine{1.f, 0.f};
#pragma unroll
      for (int k = K - 1; k >= 0; --k) mine = then(mine, {step[k].a, step[k].a * Cv[k] * dy[k]});
      const Affine after = block_exclusive_scan<true>(mine, warp_tot, phase, total);
      const float x_end = c < last ? carry[(c + 1) & 1][n] : q.dlast ? q.dlast[r.row * p.N + n] : 0.f;
      if (threadIdx.x == 0) {
        const float x_start = total.a * x_end + total.b;   // a_{t0} g_{t0}
        carry[c & 1][n] = x_start;
        if (c == 0 && q.dh0) q.dh0[r.row * p.N + n] = x_start;
      }
      float x = after.a * x_end + after.b, dA = 0.f, dB_sum = 0.f, dC_sum = 0.f;
#pragma unroll
      for (int k = K - 1; k >= 0; --k) {
        const int64_t tk = t + k;
        const float g = Cv[k] * dy[k] + x, ah = step[k].a * hprev[k];
        dA += g * dt[k] * ah;
        ddt[k] += g * (A * ah + Bv[k] * u[k]);
        gB[k] += g * Bv[k];
        const float db = g * dt[k] * u[k], dc = dy[k] * (ah + step[k].b);
        const int e = padded(int(threadIdx.x) * K + k);   // this step's slot, in time order
        if (dB) {
          exchange[0][e] = db;
        } else {
          dB_sum += db;
        }
        if (dC) {
          exchange[1][e] = dc;
        } else {
          dC_sum += dc;
        }
        x = step[k].a * g;
      }
      if (dB || dC) {   // block-uniform
        // Blocked to striped: thread i adds the steps t0 + i, t0 + i + blockDim.x, ..., so each
        // warp's atomics hit 32 consecutive floats (4 sectors) instead of 32 addresses 16 bytes
        // apart. The next writes to `exchange` follow the next block scan's barrier.
        __syncthreads();
#pragma unroll
        for (int j = 0; j < K; ++j) {
          const int i = j * int(blockDim.x) + int(threadIdx.x);
          const int64_t ti = t0 + i;
          if (ti >= p.L) continue;
          if (dB) atomicAdd(dB + n * p.bc_stride_n + ti * p.bc_stride_l, exchange[0][padded(i)]);
          if (dC) atomicAdd(dC + n * p.bc_stride_n + ti * p.bc_stride_l, exchange[1][padded(i)]);
        }
      }
      dA = warp_sum(dA);
      if (!dB) dB_sum = warp_sum(dB_sum);
      if (!dC) dC_sum = warp_sum(dC_sum);
      if (lane == 0) {
        warp_acc[0][warp][n] += dA;
        warp_acc[1][warp][n] += dB_sum;
        warp_acc[2][warp][n] += dC_sum;
      }
    }
    float du[K], dd[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      du[k] = dt[k] * gB[k] + r.D * dy[k];
      dd[k] = t + k >= p.L ? 0.f : p.delta_softplus ? ddt[k] * sigmoid_approx(raw[k]) : ddt[k];
      dD += dy[k] * u[k];
      dbias += dd[k];
    }
    store_items(static_cast<T*>(q.du) + r.off, t, p.L, vec, du);
    store_items(static_cast<T*>(q.ddelta) + r.off, t, p.L, vec, dd);
  }
  block_sum2(dD, dbias);   // its barriers also publish warp_acc
  if (threadIdx.x == 0) {
    if (q.dD) q.dD[r.row] = dD;
    if (q.ddelta_bias) q.ddelta_bias[r.row] = dbias;
  }
  for (int64_t n = threadIdx.x; n < p.N; n += blockDim.x) {
    float sums[3] = {};
    for (int w = 0; w < int(blockDim.x >> 5); ++w)
      for (int i = 0; i < 3; ++i) sums[i] += warp_acc[i][w][n];
    q.dA[r.row * p.N + n] = sums[0];
    if (!dB) q.dB[r.row * p.N + n] = sums[1];
    if (!dC) q.dC[r.row * p.N + n] = sums[2];
  }
}

// ---- host side --------------------------------------------------------------------------------
void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern selective_scan: ") + what);
}

void check_params(const SelectiveScanFwdParams& p) {
  check(p.batch >= 0 && p.dim >= 1 && p.L >= 1 && p.N >= 1, "sizes must be batch >= 0, dim, L, N >= 1");
  check(p.N <= kScanMaxState, "N must be at most 256");
  check(p.groups >= 1 && p.dim % p.groups == 0, "groups must divide dim");
  check(p.batch * p.dim < (int64_t(1) << 31), "batch * dim must be below 2^31 (one block per row)");
  check(p.u && p.delta && p.A && p.B && p.C && p.states, "u, delta, A, B, C and states are required");
}

// Threads per block: enough warps for the row's steps at `items` steps per thread, at most kMaxThreads.
int threads_for(int64_t L, int items) {
  const int64_t warps = (L + 32 * items - 1) / (32 * items);
  return int(warps < kMaxWarps ? warps : kMaxWarps) * 32;
}

// Whether every row of the (batch, dim, L) operands and of variable B/C starts on an `items`-value
// boundary, so that full items load and store as aligned vectors.
bool vector_ok(const SelectiveScanFwdParams& p, int items, int elem_size, std::initializer_list<const void*> rows) {
  bool ok = p.L % items == 0 && (!(p.variable_B || p.variable_C) || p.bc_stride_l == 1);
  for (const void* ptr : rows)
    ok = ok && reinterpret_cast<uintptr_t>(ptr) % (uintptr_t(items) * elem_size) == 0;
  return ok;
}

}  // namespace

void selective_scan_fwd(const SelectiveScanFwdParams& p, void* stream) {
  check_params(p);
  check(p.out != nullptr, "out is required");
  if (p.batch == 0) return;
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = vector_ok(p, kFwdItems, sizeof(T), {p.u, p.delta, p.z, p.out, p.variable_B ? p.B : nullptr,
                                                         p.variable_C ? p.C : nullptr});
    auto kern = selective_scan_fwd_kernel<T>;
    DLK_LAUNCH(kern, unsigned(p.batch * p.dim), threads_for(p.L, kFwdItems), 0, static_cast<cudaStream_t>(stream),
               p, vec);
    check_launch("selective_scan_fwd_kernel");
  });
}

void selective_scan_bwd(const SelectiveScanBwdParams& q, void* stream) {
  const SelectiveScanFwdParams& p = q.fwd;
  check_params(p);
  check(q.dout && q.du && q.ddelta && q.dA && q.dB && q.dC, "dout, du, ddelta, dA, dB, dC are required");
  check(!p.z || q.dz, "dz is required with z");
  if (p.batch == 0) return;
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = vector_ok(p, kBwdItems, sizeof(T), {p.u, p.delta, p.z, q.dout, q.du, q.ddelta, q.dz,
                                                         p.variable_B ? p.B : nullptr, p.variable_C ? p.C : nullptr});
    auto kern = selective_scan_bwd_kernel<T>;
    DLK_LAUNCH(kern, unsigned(p.batch * p.dim), threads_for(p.L, kBwdItems), 0, static_cast<cudaStream_t>(stream),
               q, vec);
    check_launch("selective_scan_bwd_kernel");
  });
}

}  // namespace dlk
