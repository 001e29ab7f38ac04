// Probes of the fragment interfaces of common/mma.cuh and common/async_copy.cuh, for the
// independent layout test (tests/emu/test_fragments.py): each kernel runs one warp and writes
// what every lane holds, so the test can compare it with the PTX ISA tables written out in
// Python (not with the formulas of mma.cuh). Values travel as fp32 (small integers, exact in
// fp16 and bf16).
#include "fragments.h"

#include "common/async_copy.cuh"
#include "common/mma.cuh"

namespace {

enum Probe { kLoadA, kLoadB, kLoadBRows, kLoadAx4, kLoadBx4, kLoadBRowsx4 };

// The tile (rows, ld) into shared memory, then one fragment load at its origin; out (32, 8):
// lane l's elements in fragment order (two FragB for the x4 loads of B).
template <typename T>
__global__ void fragment_load_kernel(int probe, const T* tile, int rows, int ld, float* out) {
  DLK_DYNAMIC_SHARED(T, s);
  const int lane = threadIdx.x;
  for (int i = lane; i < rows * ld; i += 32) s[i] = tile[i];
  __syncwarp();
  float v[8];
  for (int i = 0; i < 8; ++i) v[i] = -2.f;  // elements a probe does not produce
  if (probe == kLoadA || probe == kLoadAx4) {
    dlk::FragA<T> a;
    if (probe == kLoadA) dlk::load_a(a, s, ld); else dlk::load_a_x4(a, s, ld);
    for (int i = 0; i < 8; ++i) v[i] = dlk::to_float(a.x[i]);
  } else if (probe == kLoadB || probe == kLoadBRows) {
    dlk::FragB<T> b;
    if (probe == kLoadB) dlk::load_b(b, s, ld); else dlk::load_b_rows(b, s, ld);
    for (int i = 0; i < 4; ++i) v[i] = dlk::to_float(b.x[i]);
  } else {
    dlk::FragB<T> b[2];
    if (probe == kLoadBx4) dlk::load_b_x4(b, s, ld); else dlk::load_b_rows_x4(b, s, ld);
    for (int i = 0; i < 8; ++i) v[i] = dlk::to_float(b[i / 4].x[i % 4]);
  }
  for (int i = 0; i < 8; ++i) out[lane * 8 + i] = v[i];
}

// ldmatrix.x4 with lane l supplying the row at element offset offsets[l] of the (n,) shared copy
// of src; out (32, 4, 2): register r of lane l, low half first.
template <typename T, bool kTrans>
__global__ void ldmatrix_kernel(const T* src, int n, const int* offsets, float* out) {
  DLK_DYNAMIC_SHARED(T, s);
  const int lane = threadIdx.x;
  for (int i = lane; i < n; i += 32) s[i] = src[i];
  __syncwarp();
  uint32_t r[4];
  dlk::ldmatrix_x4<kTrans>(r, s + offsets[lane]);
  for (int m = 0; m < 4; ++m)
    for (int e = 0; e < 2; ++e) {
      const uint16_t bits = uint16_t(r[m] >> (16 * e));
      T x;
      std::memcpy(&x, &bits, 2);
      out[(lane * 4 + m) * 2 + e] = dlk::to_float(x);
    }
}

// d = a·b + c on fragments given per lane: a (32, 8), b (32, 4), c, d (32, 4) fp32.
template <typename T>
__global__ void mma_fragments_kernel(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x;
  dlk::FragA<T> fa;
  dlk::FragB<T> fb;
  float acc[4];
  for (int i = 0; i < 8; ++i) fa.x[i] = dlk::from_float<T>(a[lane * 8 + i]);
  for (int i = 0; i < 4; ++i) fb.x[i] = dlk::from_float<T>(b[lane * 4 + i]);
  for (int i = 0; i < 4; ++i) acc[i] = c[lane * 4 + i];
  dlk::mma_m16n8k16(acc, fa, fb);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// a_from_c(lo, hi) per lane: lo, hi (32, 4) fp32, out (32, 8).
template <typename T>
__global__ void a_from_c_kernel(const float* lo, const float* hi, float* out) {
  const int lane = threadIdx.x;
  float l[4], h[4];
  for (int i = 0; i < 4; ++i) {
    l[i] = lo[lane * 4 + i];
    h[i] = hi[lane * 4 + i];
  }
  const dlk::FragA<T> a = dlk::a_from_c<T>(l, h);
  for (int i = 0; i < 8; ++i) out[lane * 8 + i] = dlk::to_float(a.x[i]);
}

// cp.async: thread t copies 16-byte chunk t of src into shared memory, commits it as group t % 2
// ... and reads back its own chunk after cp_async_wait<wait>: out (32, 4) fp32 (src (32, 4)).
__global__ void async_copy_kernel(const float* src, int wait_groups, float* out) {
  DLK_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  dlk::cp_async_16(s + 4 * t, src + 4 * t);  // group 0
  dlk::cp_async_commit();
  dlk::cp_async_16(s + 128 + 4 * t, src + 4 * t, false);  // group 1: zero fill
  dlk::cp_async_commit();
  if (wait_groups == 0) dlk::cp_async_wait<0>(); else dlk::cp_async_wait<1>();
  for (int i = 0; i < 4; ++i) out[t * 8 + i] = s[4 * t + i];
  for (int i = 0; i < 4; ++i) out[t * 8 + 4 + i] = s[128 + 4 * t + i];
}

template <typename F>
void by_dtype(int dtype, F&& f) {
  if (dtype == 0) return f(float{});
  if (dtype == 1) return f(__half{});
  return f(__nv_bfloat16{});
}

}  // namespace

namespace planted {

void fragment_load(int dtype, int probe, const void* tile, int rows, int ld, float* out) {
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto kern = fragment_load_kernel<T>;
    DLK_LAUNCH(kern, 1, 32, size_t(rows) * ld * sizeof(T), nullptr, probe, static_cast<const T*>(tile),
               rows, ld, out);
    dlk::check_launch("fragment_load_kernel");
  });
}

void ldmatrix(int dtype, bool trans, const void* src, int n, const int* offsets, float* out) {
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      auto kern = trans ? ldmatrix_kernel<T, true> : ldmatrix_kernel<T, false>;
      DLK_LAUNCH(kern, 1, 32, size_t(n) * sizeof(T), nullptr, static_cast<const T*>(src), n, offsets, out);
      dlk::check_launch("ldmatrix_kernel");
    }
  });
}

void mma_fragments(int dtype, const float* a, const float* b, const float* c, float* d) {
  by_dtype(dtype, [&](auto tag) {
    auto kern = mma_fragments_kernel<decltype(tag)>;
    DLK_LAUNCH(kern, 1, 32, 0, nullptr, a, b, c, d);
    dlk::check_launch("mma_fragments_kernel");
  });
}

void a_from_c(int dtype, const float* lo, const float* hi, float* out) {
  by_dtype(dtype, [&](auto tag) {
    auto kern = a_from_c_kernel<decltype(tag)>;
    DLK_LAUNCH(kern, 1, 32, 0, nullptr, lo, hi, out);
    dlk::check_launch("a_from_c_kernel");
  });
}

void async_copy(const float* src, int wait_groups, float* out) {
  auto kern = async_copy_kernel;
  DLK_LAUNCH(kern, 1, 32, 256 * sizeof(float), nullptr, src, wait_groups, out);
  dlk::check_launch("async_copy_kernel");
}

}  // namespace planted
