// Argument checks and operand preparation of the selective scan launchers, shared by the two
// torch bindings (csrc/scan/scan_binding.cpp for dlkern._C / _C_emu, csrc/cpu/bindings.cpp for
// _C_cpu); their Python-visible definitions: scan_pydef.h.
// Torch-facing (ATen's Tensor only, no pybind11): include it only from a binding file.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>

#include "scan/selective_scan.h"

namespace dlk_scan {

using OptTensor = std::optional<at::Tensor>;

inline bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// Where the kernels want their operands: the CPU kernel takes fp32 with B/C time-major
// (batch, G, L, N); the CUDA kernels take u's dtype with B/C as given, (batch, G, N, L).
struct Layout {
  bool (*on_device)(const at::Tensor&);
  const char* device_kind;   // "a CPU tensor", "a CUDA tensor"
  bool fp32_time_major;
};

inline void check_tensor(const at::Tensor& t, const char* name, const Layout& lay) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(lay.on_device(t), name, " must be ", lay.device_kind, ", got a tensor on ", t.device());
  TORCH_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
}

// The prepared operands and the params struct pointing into them (the struct does not own them).
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias, h0, seq_idx;
  dlk::SelectiveScanFwdParams p{};

  ScanInputs(const at::Tensor& u_in, const at::Tensor& delta_in, const at::Tensor& A_in,
             const at::Tensor& B_in, const at::Tensor& C_in, const OptTensor& D_in,
             const OptTensor& z_in, const OptTensor& bias_in, bool delta_softplus, const OptTensor& h0_in,
             const OptTensor& seq_in, const Layout& lay) {
    for (auto [t, name] : {std::pair{&u_in, "u"}, {&delta_in, "delta"}, {&A_in, "A"}, {&B_in, "B"}, {&C_in, "C"}})
      check_tensor(*t, name, lay);
    TORCH_CHECK(u_in.dim() == 3, "u must be (batch, dim, L), got shape ", u_in.sizes());
    TORCH_CHECK(delta_in.sizes() == u_in.sizes(), "delta must have u's shape ", u_in.sizes(), ", got ",
                delta_in.sizes());
    const int64_t batch = u_in.size(0), dim = u_in.size(1), L = u_in.size(2);
    TORCH_CHECK(A_in.dim() == 2 && A_in.size(0) == dim, "A must be (dim, N), got shape ", A_in.sizes());
    const int64_t N = A_in.size(1);
    const at::ScalarType io = lay.fp32_time_major ? at::kFloat : u_in.scalar_type();
    auto as_io = [&](const at::Tensor& t) { return t.to(io).contiguous(); };
    auto as_f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
    u = as_io(u_in);
    delta = as_io(delta_in);
    A = as_f32(A_in);
    int64_t groups = 1;
    auto bc = [&](const at::Tensor& t, const char* name, bool& variable) {
      variable = t.dim() == 4;
      if (variable) {
        TORCH_CHECK(t.size(0) == batch && t.size(2) == N && t.size(3) == L && t.size(1) >= 1 &&
                        dim % t.size(1) == 0,
                    name, " must be (batch, G, N, L) with G dividing dim, or (dim, N); got shape ", t.sizes());
        groups = t.size(1);
        return as_io(lay.fp32_time_major ? t.transpose(2, 3) : t);
      }
      TORCH_CHECK(t.dim() == 2 && t.size(0) == dim && t.size(1) == N,
                  name, " must be (batch, G, N, L) or (dim, N), got shape ", t.sizes());
      return as_io(t);
    };
    B = bc(B_in, "B", p.variable_B);
    C = bc(C_in, "C", p.variable_C);
    TORCH_CHECK(!(p.variable_B && p.variable_C) || B_in.size(1) == C_in.size(1),
                "B and C must have the same number of groups, got ", B_in.size(1), " and ", C_in.size(1));
    if (present(D_in)) D = as_f32(*D_in);
    if (present(z_in)) {
      TORCH_CHECK(z_in->sizes() == u_in.sizes(), "z must have u's shape ", u_in.sizes(), ", got ", z_in->sizes());
      z = as_io(*z_in);
    }
    if (present(bias_in)) delta_bias = as_f32(*bias_in);
    for (auto [t, name] : {std::pair{&D, "D"}, {&delta_bias, "delta_bias"}})
      TORCH_CHECK(!t->defined() || t->numel() == dim, name, " must be (dim,), got shape ", t->sizes());
    if (present(h0_in)) {
      check_tensor(*h0_in, "initial_state", lay);
      TORCH_CHECK(h0_in->sizes() == at::IntArrayRef({batch, dim, N}), "initial_state must be (batch, dim, N), got ",
                  h0_in->sizes());
      h0 = as_f32(*h0_in);
    }
    if (present(seq_in)) {
      TORCH_CHECK(lay.on_device(*seq_in) && seq_in->scalar_type() == at::kInt &&
                      seq_in->sizes() == at::IntArrayRef({batch, L}),
                  "seq_idx must be ", lay.device_kind, " of int32 (batch, L), got ", seq_in->scalar_type(), " ",
                  seq_in->sizes());
      seq_idx = seq_in->contiguous();
    }
    p.u = u.data_ptr();
    p.delta = delta.data_ptr();
    p.A = A.data_ptr<float>();
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    p.D = D.defined() ? D.data_ptr<float>() : nullptr;
    p.z = z.defined() ? z.data_ptr() : nullptr;
    p.delta_bias = delta_bias.defined() ? delta_bias.data_ptr<float>() : nullptr;
    p.h0 = h0.defined() ? h0.data_ptr<float>() : nullptr;
    p.seq_idx = seq_idx.defined() ? seq_idx.data_ptr<int32_t>() : nullptr;
    p.batch = batch;
    p.dim = dim;
    p.L = L;
    p.N = N;
    p.groups = groups;
    p.bc_stride_l = lay.fp32_time_major ? N : 1;
    p.bc_stride_n = lay.fp32_time_major ? 1 : L;
    p.delta_softplus = delta_softplus;
    p.dtype = io == at::kFloat ? dlk::DType::F32 : io == at::kHalf ? dlk::DType::F16 : dlk::DType::BF16;
    TORCH_CHECK(io == at::kFloat || io == at::kHalf || io == at::kBFloat16,
                "u must be float32, float16 or bfloat16, got ", io);
  }

  int64_t n_chunks() const { return (p.L + dlk::kScanChunk - 1) / dlk::kScanChunk; }

  // dout, states and dlast of the backward, checked against the forward's operands.
  void check_backward(const at::Tensor& dout, const at::Tensor& states, const OptTensor& dlast,
                      const Layout& lay) const {
    check_tensor(dout, "dout", lay);
    TORCH_CHECK(dout.sizes() == u.sizes(), "dout must have u's shape ", u.sizes(), ", got ", dout.sizes());
    TORCH_CHECK(states.sizes() == at::IntArrayRef({p.batch, p.dim, n_chunks(), p.N}) &&
                    states.scalar_type() == at::kFloat && states.device() == u.device(),
                "states must be the forward's fp32 (batch, dim, n_chunks, N) tensor, got ", states.sizes());
    TORCH_CHECK(!present(dlast) || dlast->numel() == p.batch * p.dim * p.N,
                "dlast must be (batch, dim, N), got ", dlast->sizes());
  }
};

}  // namespace dlk_scan
