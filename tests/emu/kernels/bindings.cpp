// pybind11 module of the test kernels in planted.cu. Tensors arrive as data pointers (ints) so this
// file needs only pybind11, not torch/extension.h (it compiles in seconds); the caller keeps the
// tensors alive and checks shapes. Launch errors (std::runtime_error) become RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "fragments.h"
#include "planted.h"

namespace {
template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("block_sum", [](std::uintptr_t x, std::uintptr_t out, int blocks, bool missing_sync) {
    planted::block_sum(ptr<const float>(x), ptr<float>(out), blocks, missing_sync);
  });
  m.def("warp_scan", [](std::uintptr_t x, std::uintptr_t out, int n) {
    planted::warp_scan(ptr<const int>(x), ptr<int>(out), n);
  });
  m.def("shuffle_outside_mask", [](std::uintptr_t x, std::uintptr_t out) {
    planted::shuffle_outside_mask(ptr<const float>(x), ptr<float>(out));
  });
  m.def("divergent_barrier", [](std::uintptr_t x, std::uintptr_t out) {
    planted::divergent_barrier(ptr<const float>(x), ptr<float>(out));
  });
  m.def("shuffle_missing_lanes", [](std::uintptr_t x, std::uintptr_t out) {
    planted::shuffle_missing_lanes(ptr<const float>(x), ptr<float>(out));
  });
  m.def("split_barrier", [](std::uintptr_t x, std::uintptr_t out) {
    planted::split_barrier(ptr<const float>(x), ptr<float>(out));
  });
  m.def("spin", [](std::uintptr_t flag) { planted::spin(ptr<const int>(flag)); });
  m.def("off_by_one_store", [](std::uintptr_t out, int n) { planted::off_by_one_store(ptr<float>(out), n); });
  m.def("coordinates", [](std::uintptr_t out, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz) {
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    planted::coordinates(ptr<int>(out), grid, block);
  });
  m.def("reverse", [](std::uintptr_t x, std::uintptr_t out, int blocks, int threads) {
    planted::reverse(ptr<const float>(x), ptr<float>(out), blocks, threads);
  });
  m.def("mma_chain", [](int dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t v, std::uintptr_t s,
                        std::uintptr_t o) {
    planted::mma_chain(dtype, ptr<const void>(a), ptr<const void>(b), ptr<const void>(v), ptr<float>(s),
                       ptr<float>(o));
  });
  m.def("big_smem", [](std::uintptr_t out, int bytes, int optin_bytes) {
    planted::big_smem(ptr<int>(out), bytes, optin_bytes);
  });
  // Fragment probes (fragments.cu).
  m.def("fragment_load", [](int dtype, int probe, std::uintptr_t tile, int rows, int ld, std::uintptr_t out) {
    planted::fragment_load(dtype, probe, ptr<const void>(tile), rows, ld, ptr<float>(out));
  });
  m.def("ldmatrix", [](int dtype, bool trans, std::uintptr_t src, int n, std::uintptr_t offsets, std::uintptr_t out) {
    planted::ldmatrix(dtype, trans, ptr<const void>(src), n, ptr<const int>(offsets), ptr<float>(out));
  });
  m.def("mma_fragments", [](int dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c, std::uintptr_t d) {
    planted::mma_fragments(dtype, ptr<const float>(a), ptr<const float>(b), ptr<const float>(c), ptr<float>(d));
  });
  m.def("a_from_c", [](int dtype, std::uintptr_t lo, std::uintptr_t hi, std::uintptr_t out) {
    planted::a_from_c(dtype, ptr<const float>(lo), ptr<const float>(hi), ptr<float>(out));
  });
  m.def("async_copy", [](std::uintptr_t src, int wait_groups, std::uintptr_t out) {
    planted::async_copy(ptr<const float>(src), wait_groups, ptr<float>(out));
  });
  // The emulator's conversions, element-wise over n values (raw 16-bit patterns as int16).
  m.def("float_to_half", [](std::uintptr_t x, std::uintptr_t out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) ptr<__half>(out)[i] = __float2half_rn(ptr<const float>(x)[i]);
  });
  m.def("float_to_bf16", [](std::uintptr_t x, std::uintptr_t out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) ptr<__nv_bfloat16>(out)[i] = __float2bfloat16_rn(ptr<const float>(x)[i]);
  });
  m.def("half_to_float", [](std::uintptr_t x, std::uintptr_t out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) ptr<float>(out)[i] = __half2float(ptr<const __half>(x)[i]);
  });
  m.def("bf16_to_float", [](std::uintptr_t x, std::uintptr_t out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) ptr<float>(out)[i] = __bfloat162float(ptr<const __nv_bfloat16>(x)[i]);
  });
}
