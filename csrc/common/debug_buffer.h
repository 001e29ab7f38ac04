// New output tensors for the torch binding files (csrc/<family>/*_binding.cpp for dlkern._C /
// _C_emu, csrc/cpu/bindings.cpp for dlkern._C_cpu): NaN-filled in debug mode so that any element a
// kernel fails to write shows up. Each extension is its own shared library with its own flag, set
// through its `set_debug_nan_fill` (dlkern.debug sets every one that is built).
// Torch-facing (ATen's Tensor and at::empty only): include it only from a binding file.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <atomic>
#include <limits>

namespace dlk {

inline std::atomic<bool> g_debug_nan_fill{false};

inline void set_debug_nan_fill(bool enabled) { g_debug_nan_fill.store(enabled); }

// t, NaN-filled in debug mode (for outputs allocated with a layout of their own).
inline at::Tensor debug_nan_fill(at::Tensor t) {
  if (g_debug_nan_fill.load()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline at::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return debug_nan_fill(at::empty(sizes, options));
}

}  // namespace dlk
