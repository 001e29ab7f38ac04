// The torch binding of the selective scan kernels (selective_scan.cu): checks, output allocation
// and the params struct of each launcher (conventions: common/binding.h). The Python-visible
// definitions with their docs are in csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "scan/scan_binding.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "scan/scan_inputs.h"
#include "scan/selective_scan.h"
#include "scan/state_update.h"

namespace dlk_bind {

// ---- selective scan ---------------------------------------------------------------------------

namespace {

const dlk_scan::Layout kScanLayout{on_kernel_device, kDeviceKind, /*fp32_time_major=*/false};

}  // namespace

// (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus, const OptTensor& initial_state, const OptTensor& seq_idx) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, kScanLayout);
  LaunchContext ctx(in.u);
  at::Tensor out = new_buffer({in.p.batch, in.p.dim, in.p.L}, in.u.options());
  at::Tensor states = new_buffer({in.p.batch, in.p.dim, in.n_chunks(), in.p.N}, in.u.options().dtype(at::kFloat));
  in.p.out = out.data_ptr();
  in.p.states = states.data_ptr<float>();
  in.p.num_sms = ctx.num_sms();
  dlk::selective_scan_fwd(in.p, ctx.stream());
  return {out, states};
}

// (du, ddelta, dz or empty: u's dtype; dA, dB, dC: fp32 in A's, B's, C's shapes; dD, ddelta_bias:
// fp32 (dim,) or empty; dinitial_state: fp32 (batch, dim, N) or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast, const OptTensor& initial_state,
                   const OptTensor& seq_idx) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, kScanLayout);
  in.check_backward(dout, states, dlast, kScanLayout);
  const dlk::SelectiveScanFwdParams& p = in.p;
  LaunchContext ctx(in.u);
  const at::Tensor dout_c = dout.to(in.u.scalar_type()).contiguous(), states_c = states.contiguous();
  const at::Tensor dlast_c = present(dlast) ? dlast->to(at::kFloat).contiguous() : at::Tensor();
  const auto io = in.u.options(), f32 = io.dtype(at::kFloat);
  at::Tensor du = new_buffer({p.batch, p.dim, p.L}, io);
  at::Tensor ddelta = new_buffer({p.batch, p.dim, p.L}, io);
  at::Tensor dz = in.z.defined() ? new_buffer({p.batch, p.dim, p.L}, io) : at::empty({0}, io);
  at::Tensor dA = new_buffer({p.batch, p.dim, p.N}, f32);
  // variable B/C: summed over a group's channels atomically, so zeroed; else per-row partials
  auto bc = [&](const at::Tensor& X, bool variable) {
    return variable ? at::zeros(X.sizes(), f32) : new_buffer({p.batch, p.dim, p.N}, f32);
  };
  at::Tensor dB = bc(in.B, p.variable_B), dC = bc(in.C, p.variable_C);
  at::Tensor dD = in.D.defined() ? new_buffer({p.batch, p.dim}, f32) : at::Tensor();
  at::Tensor dbias = in.delta_bias.defined() ? new_buffer({p.batch, p.dim}, f32) : at::Tensor();
  at::Tensor dh0 = in.h0.defined() ? new_buffer({p.batch, p.dim, p.N}, f32) : at::empty({0}, f32);
  dlk::SelectiveScanBwdParams q{};
  q.fwd = p;
  q.fwd.states = states_c.data_ptr<float>();
  q.fwd.num_sms = ctx.num_sms();
  q.dout = dout_c.data_ptr();
  q.dlast = dlast_c.defined() ? dlast_c.data_ptr<float>() : nullptr;
  q.du = du.data_ptr();
  q.ddelta = ddelta.data_ptr();
  q.dz = in.z.defined() ? dz.data_ptr() : nullptr;
  q.dA = dA.data_ptr<float>();
  q.dB = dB.data_ptr<float>();
  q.dC = dC.data_ptr<float>();
  q.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
  q.ddelta_bias = dbias.defined() ? dbias.data_ptr<float>() : nullptr;
  q.dh0 = in.h0.defined() ? dh0.data_ptr<float>() : nullptr;
  q.n_dblocks = 1;
  if (p.batch > 0) {
    dlk::selective_scan_bwd(q, ctx.stream());
  } else {
    for (at::Tensor* t : {&dA, &dB, &dC, &dD, &dbias}) if (t->defined()) t->zero_();
  }
  auto finish = [&](const at::Tensor& t, bool variable) { return variable ? t : t.sum(0); };
  return {du, ddelta, dA.sum(0), finish(dB, p.variable_B), finish(dC, p.variable_C),
          dD.defined() ? dD.sum(0) : at::empty({0}, f32), dz,
          dbias.defined() ? dbias.sum(0) : at::empty({0}, f32), dh0};
}

// ---- selective state update (one decoding step) ------------------------------------------------

// out (batch, dim) in x's dtype; state updated in place (rows state_batch_indices[b] when given).
// dt, z, B, C are read in x's dtype, A, D, dt_bias in fp32 (copies only where the given tensors
// differ: all of them are small).
at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                  const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                  const OptTensor& D, const OptTensor& z, const OptTensor& dt_bias,
                                  bool dt_softplus, const OptTensor& state_batch_indices) {
  const dlk_scan::Layout& lay = kScanLayout;
  for (auto [t, name] : {std::pair{&state, "state"}, {&x, "x"}, {&dt, "dt"}, {&A, "A"}, {&B, "B"}, {&C, "C"}})
    dlk_scan::check_tensor(*t, name, lay);
  TORCH_CHECK(state.dim() == 3, "state must be (batch, dim, N), got shape ", state.sizes());
  const bool indexed = present(state_batch_indices);
  const int64_t batch = indexed ? x.size(0) : state.size(0), dim = state.size(1), N = state.size(2);
  at::Tensor index;
  if (indexed) {
    TORCH_CHECK(lay.on_device(*state_batch_indices) && state_batch_indices->scalar_type() == at::kInt &&
                    state_batch_indices->dim() == 1 && state_batch_indices->size(0) == batch,
                "state_batch_indices must be ", lay.device_kind, " of int32 (batch,), got ",
                state_batch_indices->scalar_type(), " ", state_batch_indices->sizes());
    index = state_batch_indices->contiguous();
  }
  TORCH_CHECK(x.dim() == 2 && x.size(0) == batch && x.size(1) == dim, "x must be (batch, dim) = (", batch,
              ", ", dim, "), got shape ", x.sizes());
  const dlk::DType io = kernel_dtype(x);
  TORCH_CHECK(state.scalar_type() == x.scalar_type() || state.scalar_type() == at::kFloat,
              "state must be float32 or x's dtype ", x.scalar_type(), ", got ", state.scalar_type());
  TORCH_CHECK(dt.sizes() == x.sizes(), "dt must have x's shape ", x.sizes(), ", got ", dt.sizes());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) == N, "A must be (dim, N) = (", dim, ", ", N,
              "), got shape ", A.sizes());
  TORCH_CHECK(B.dim() == 3 && B.size(0) == batch && B.size(2) == N && B.size(1) >= 1 && dim % B.size(1) == 0,
              "B must be (batch, G, N) with G dividing dim, got shape ", B.sizes());
  TORCH_CHECK(C.sizes() == B.sizes(), "C must have B's shape ", B.sizes(), ", got ", C.sizes());
  const auto as_x = [&](const at::Tensor& t) { return t.to(x.scalar_type()); };
  const auto as_f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const at::Tensor dt_x = as_x(dt), A_f = as_f32(A), B_c = as_x(B).contiguous(), C_c = as_x(C).contiguous();
  at::Tensor z_x, D_f, bias_f;
  if (present(z)) {
    TORCH_CHECK(z->sizes() == x.sizes(), "z must have x's shape ", x.sizes(), ", got ", z->sizes());
    z_x = as_x(*z);
  }
  if (present(D)) D_f = as_f32(*D);
  if (present(dt_bias)) bias_f = as_f32(*dt_bias);
  for (auto [t, name] : {std::pair{&D_f, "D"}, {&bias_f, "dt_bias"}})
    TORCH_CHECK(!t->defined() || t->numel() == dim, name, " must be (dim,), got shape ", t->sizes());
  LaunchContext ctx(x);
  at::Tensor out = new_buffer({batch, dim}, x.options());
  dlk::SelectiveStateUpdateParams p{};
  p.state = state.data_ptr();
  p.state_index = indexed ? index.data_ptr<int32_t>() : nullptr;
  p.x = x.data_ptr();
  p.dt = dt_x.data_ptr();
  p.z = z_x.defined() ? z_x.data_ptr() : nullptr;
  p.A = A_f.data_ptr<float>();
  p.B = B_c.data_ptr();
  p.C = C_c.data_ptr();
  p.D = D_f.defined() ? D_f.data_ptr<float>() : nullptr;
  p.dt_bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.batch = batch;
  p.dim = dim;
  p.N = N;
  p.groups = B.size(1);
  for (int i = 0; i < 3; ++i) p.state_stride[i] = state.stride(i);
  for (int i = 0; i < 2; ++i) {
    p.x_stride[i] = x.stride(i);
    p.dt_stride[i] = dt_x.stride(i);
    p.z_stride[i] = z_x.defined() ? z_x.stride(i) : 0;
  }
  p.dt_softplus = dt_softplus;
  p.dtype = io;
  p.state_dtype = kernel_dtype(state);
  dlk::selective_state_update(p, ctx.stream());
  return out;
}

}  // namespace dlk_bind
