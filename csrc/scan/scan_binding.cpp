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

namespace dlk_bind {

// ---- selective scan ---------------------------------------------------------------------------

namespace {

const dlk_scan::Layout kScanLayout{on_kernel_device, kDeviceKind, /*fp32_time_major=*/false};

}  // namespace

// (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, kScanLayout);
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
// fp32 (dim,) or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, kScanLayout);
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
  q.n_dblocks = 1;
  if (p.batch > 0) {
    dlk::selective_scan_bwd(q, ctx.stream());
  } else {
    for (at::Tensor* t : {&dA, &dB, &dC, &dD, &dbias}) if (t->defined()) t->zero_();
  }
  auto finish = [&](const at::Tensor& t, bool variable) { return variable ? t : t.sum(0); };
  return {du, ddelta, dA.sum(0), finish(dB, p.variable_B), finish(dC, p.variable_C),
          dD.defined() ? dD.sum(0) : at::empty({0}, f32), dz,
          dbias.defined() ? dbias.sum(0) : at::empty({0}, f32)};
}

}  // namespace dlk_bind
