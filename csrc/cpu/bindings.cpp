// dlkern._C_cpu: the torch binding of the CPU C++ kernels (the fast default path of ops whose
// reference is a slow sequential recurrence). Same launcher names and signatures as the Triton
// launchers in dlkern.kernels and the CUDA ones in dlkern._C. Half inputs are computed in fp32.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <optional>
#include <tuple>

#include "common/debug_buffer.h"
#include "scan/scan_inputs.h"
#include "scan/scan_pydef.h"
#include "scan/selective_scan.h"

namespace {

using dlk_scan::OptTensor;
using dlk_scan::present;

using dlk::new_buffer;
using dlk::set_debug_nan_fill;

// ATen's intra-op pool behind the kernels' plain-function parallel_for.
void aten_parallel_for(int64_t n, void* ctx, void (*fn)(void*, int64_t, int64_t)) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

// ---- selective scan ---------------------------------------------------------------------------
using dlk_scan::ScanInputs;

bool is_cpu(const at::Tensor& t) { return t.is_cpu(); }
const dlk_scan::Layout kCpuLayout{is_cpu, "a CPU tensor", /*fp32_time_major=*/true};

// (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus, const OptTensor& initial_state, const OptTensor& seq_idx) {
  ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, kCpuLayout);
  const auto opts = in.u.options();
  at::Tensor out = new_buffer({in.p.batch, in.p.dim, in.p.L}, opts);
  at::Tensor states = new_buffer({in.p.batch, in.p.dim, in.n_chunks(), in.p.N}, opts);
  in.p.num_sms = 1;
  in.p.out = out.data_ptr();
  in.p.states = states.data_ptr<float>();
  if (in.p.batch > 0) dlk::selective_scan_fwd_cpu(in.p, aten_parallel_for);
  return {out.to(u.scalar_type()), states};
}

// (du, ddelta, dz or empty: u's dtype; dA, dB, dC: fp32 in A's, B's, C's shapes; dD, ddelta_bias:
// fp32 (dim,) or empty; dinitial_state: fp32 (batch, dim, N) or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast, const OptTensor& initial_state,
                   const OptTensor& seq_idx) {
  ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, kCpuLayout);
  in.check_backward(dout, states, dlast, kCpuLayout);
  const dlk::SelectiveScanFwdParams& p = in.p;
  const at::Tensor dout32 = dout.to(at::kFloat).contiguous(), states32 = states.contiguous();
  const at::Tensor dlast32 = present(dlast) ? dlast->to(at::kFloat).contiguous() : at::Tensor();
  const auto opts = in.u.options();
  // About 16 tasks of whole channel tiles, each owning (L, N) dB/dC partials. Not derived
  // from the thread count: the partials' summation order, hence the bits, must not depend on it.
  const int64_t tiles = (p.dim / p.groups + dlk::kScanCpuLanes - 1) / dlk::kScanCpuLanes;
  const int64_t bg = std::max<int64_t>(p.batch * p.groups, 1);
  const int64_t n_dblocks = std::clamp<int64_t>((16 + bg - 1) / bg, 1, tiles);
  dlk::SelectiveScanBwdParams q{};
  q.fwd = p;
  q.fwd.states = states32.data_ptr<float>();
  at::Tensor du = new_buffer({p.batch, p.dim, p.L}, opts);
  at::Tensor ddelta = new_buffer({p.batch, p.dim, p.L}, opts);
  at::Tensor dz = in.z.defined() ? new_buffer({p.batch, p.dim, p.L}, opts) : at::Tensor();
  at::Tensor dA = new_buffer({p.batch, p.dim, p.N}, opts);
  auto bc_partial = [&](bool variable) {
    return variable ? new_buffer({p.batch, p.groups, n_dblocks, p.L, p.N}, opts)
                    : new_buffer({p.batch, p.dim, p.N}, opts);
  };
  at::Tensor dB = bc_partial(p.variable_B), dC = bc_partial(p.variable_C);
  at::Tensor dD = in.D.defined() ? new_buffer({p.batch, p.dim}, opts) : at::Tensor();
  at::Tensor dh0 = in.h0.defined() ? new_buffer({p.batch, p.dim, p.N}, opts) : at::empty({0}, opts);
  q.dh0 = in.h0.defined() ? dh0.data_ptr<float>() : nullptr;
  q.dout = dout32.data_ptr();
  q.dlast = dlast32.defined() ? dlast32.data_ptr<float>() : nullptr;
  q.du = du.data_ptr();
  q.ddelta = ddelta.data_ptr();
  q.dz = dz.defined() ? dz.data_ptr() : nullptr;
  q.dA = dA.data_ptr<float>();
  q.dB = dB.data_ptr<float>();
  q.dC = dC.data_ptr<float>();
  q.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
  q.ddelta_bias = nullptr;  // from ddelta below
  q.n_dblocks = n_dblocks;
  if (p.batch > 0) {
    dlk::selective_scan_bwd_cpu(q, aten_parallel_for);
  } else {
    for (at::Tensor* t : {&dA, &dB, &dC, &dD}) if (t->defined()) t->zero_();
  }
  const at::Tensor dbias = in.delta_bias.defined() ? ddelta.sum({0, 2}) : at::Tensor();
  // Partials summed in a fixed order; variable B/C back to (batch, G, N, L).
  auto finish_bc = [&](const at::Tensor& t, bool variable) {
    return variable ? t.sum(2).transpose(2, 3).contiguous() : t.sum(0);
  };
  const auto dtype = u.scalar_type();
  auto empty = [&](at::ScalarType t) { return at::empty({0}, opts.dtype(t)); };  // distinct outputs
  return {du.to(dtype), ddelta.to(dtype), dA.sum(0), finish_bc(dB, p.variable_B), finish_bc(dC, p.variable_C),
          dD.defined() ? dD.sum(0) : empty(at::kFloat), dz.defined() ? dz.to(dtype) : empty(dtype),
          dbias.defined() ? dbias : empty(at::kFloat), dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "dlkern CPU C++ kernels; same launchers and signatures as dlkern.kernels (Triton).";
  dlk_scan::def_selective_scan(m, &selective_scan_fwd, &selective_scan_bwd);
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
