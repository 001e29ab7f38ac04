// Selective scan on the CPU (math: selective_scan.h). The unit of work is a tile of kLanes
// channels of one (batch, group): every inner loop runs over the tile's lanes (one GCC vector
// register of fp32), so B and C broadcast and nothing is reduced across lanes inside the time loop; a
// polynomial exp replaces libm's so those loops vectorize. A tile's inputs are transposed chunk by
// chunk into (time, lane) buffers, where delta_bias and softplus are applied (the backward's ddelta
// is the gradient of the raw delta). fp32 only: the binding converts half inputs. The kernel
// (selective_scan_cpu_lanes.h) is compiled twice: 16 lanes for AVX-512 (x86-64-v4), and 8 lanes
// for AVX2+FMA (x86-64-v3) and baseline x86-64 (a 16-lane vector has no register there), picked
// at run time.
//
// Forward: one sequential pass over L per tile, storing the state at the end of every chunk.
// Backward: per tile, chunks from last to first; each chunk's states and decays are recomputed
// from the previous chunk's end into (kScanChunk, N, kLanes) buffers, then walked backwards. The
// tiles of one (batch, group, channel block) run in one task, which owns its dB/dC partials
// (summed over tasks by the binding), so there are no races and the summation order does not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "scan/selective_scan.h"

namespace dlk {
namespace {

#define DLK_INLINE inline __attribute__((always_inline))

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern selective_scan (cpu): ") + what);
}

void check_params(const SelectiveScanFwdParams& p) {
  check(p.dtype == DType::F32, "the CPU kernel takes float32 tensors");
  check(p.batch >= 0 && p.dim >= 1 && p.L >= 1 && p.N >= 1, "sizes must be batch >= 0, dim, L, N >= 1");
  check(p.N <= kScanMaxState, "N must be at most 256");
  check(p.groups >= 1 && p.dim % p.groups == 0, "groups must divide dim");
  check(p.u && p.delta && p.A && p.B && p.C && p.states, "u, delta, A, B, C and states are required");
  check(p.bc_stride_n == 1 && p.bc_stride_l == p.N, "B and C must be time-major (batch, G, L, N)");
}

// Every function taking or returning a vector is inlined: the wider-vector ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DLK_X86_CLONES 1
#endif

namespace lanes16 {
constexpr int kLanes = 16;
#ifdef DLK_X86_CLONES
#define DLK_CPU_TARGET __attribute__((target("arch=x86-64-v4")))
#else
#define DLK_CPU_TARGET
#endif
#include "scan/selective_scan_cpu_lanes.h"
#undef DLK_CPU_TARGET
}  // namespace lanes16

namespace lanes8 {
constexpr int kLanes = 8;
#ifdef DLK_X86_CLONES
#define DLK_CPU_TARGET __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DLK_CPU_TARGET
#endif
#include "scan/selective_scan_cpu_lanes.h"
#undef DLK_CPU_TARGET
}  // namespace lanes8

bool use_avx512() {
#ifdef DLK_X86_CLONES
  static const bool yes = __builtin_cpu_supports("x86-64-v4");
  return yes;
#else
  return false;
#endif
}

}  // namespace

void selective_scan_fwd_cpu(const SelectiveScanFwdParams& p, ParallelFor parallel_for) {
  check_params(p);
  check(p.out != nullptr, "out is required");
  use_avx512() ? lanes16::fwd(p, parallel_for) : lanes8::fwd(p, parallel_for);
}

void selective_scan_bwd_cpu(const SelectiveScanBwdParams& q, ParallelFor parallel_for) {
  check_params(q.fwd);
  check(q.dout && q.du && q.ddelta && q.dA && q.dB && q.dC, "dout, du, ddelta, dA, dB, dC are required");
  check(!q.fwd.z || q.dz, "dz is required with z");
  use_avx512() ? lanes16::bwd(q, parallel_for) : lanes8::bwd(q, parallel_for);
}

}  // namespace dlk
