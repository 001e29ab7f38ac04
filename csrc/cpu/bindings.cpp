// dlkern._C_cpu: the torch binding of the CPU C++ kernels (the fast default path of ops whose
// reference is a slow sequential recurrence). Same launcher names and signatures as the Triton
// launchers in dlkern.kernels and the CUDA ones in dlkern._C. Half inputs are computed in fp32.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <atomic>
#include <limits>
#include <optional>
#include <tuple>

#include "scan/selective_scan.h"

namespace {

using OptTensor = std::optional<at::Tensor>;

std::atomic<bool> g_debug_nan_fill{false};

void set_debug_nan_fill(bool enabled) { g_debug_nan_fill.store(enabled); }

at::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (g_debug_nan_fill.load()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// ATen's intra-op pool behind the kernels' plain-function parallel_for.
void aten_parallel_for(int64_t n, void* ctx, void (*fn)(void*, int64_t, int64_t)) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

// ---- selective scan ---------------------------------------------------------------------------
at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.is_cpu(), name, " must be a CPU tensor, got a tensor on ", t.device());
  TORCH_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
}

// The fp32 inputs and the params struct pointing into them (the struct does not own them).
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias;
  dlk::SelectiveScanFwdParams p{};

  ScanInputs(const at::Tensor& u_in, const at::Tensor& delta_in, const at::Tensor& A_in,
             const at::Tensor& B_in, const at::Tensor& C_in, const OptTensor& D_in,
             const OptTensor& z_in, const OptTensor& bias_in, bool delta_softplus) {
    for (auto [t, name] : {std::pair{&u_in, "u"}, {&delta_in, "delta"}, {&A_in, "A"}, {&B_in, "B"}, {&C_in, "C"}})
      check_cpu(*t, name);
    TORCH_CHECK(u_in.dim() == 3, "u must be (batch, dim, L), got shape ", u_in.sizes());
    TORCH_CHECK(delta_in.sizes() == u_in.sizes(), "delta must have u's shape ", u_in.sizes(), ", got ",
                delta_in.sizes());
    const int64_t batch = u_in.size(0), dim = u_in.size(1), L = u_in.size(2);
    TORCH_CHECK(A_in.dim() == 2 && A_in.size(0) == dim, "A must be (dim, N), got shape ", A_in.sizes());
    const int64_t N = A_in.size(1);
    TORCH_CHECK(N >= 1 && N <= dlk::kScanMaxState, "N must be in [1, 256], got ", N);
    u = f32(u_in);
    delta = f32(delta_in);
    A = f32(A_in);
    int64_t groups = 1;
    auto bc = [&](const at::Tensor& t, const char* name, bool& variable) {
      variable = t.dim() == 4;
      if (variable) {
        TORCH_CHECK(t.size(0) == batch && t.size(2) == N && t.size(3) == L && dim % t.size(1) == 0,
                    name, " must be (batch, G, N, L) with G dividing dim, or (dim, N); got shape ", t.sizes());
        groups = t.size(1);
        return f32(t.transpose(2, 3));  // (batch, G, L, N): time-major, n contiguous
      }
      TORCH_CHECK(t.dim() == 2 && t.size(0) == dim && t.size(1) == N,
                  name, " must be (batch, G, N, L) or (dim, N), got shape ", t.sizes());
      return f32(t);
    };
    B = bc(B_in, "B", p.variable_B);
    C = bc(C_in, "C", p.variable_C);
    TORCH_CHECK(!(p.variable_B && p.variable_C) || B_in.size(1) == C_in.size(1),
                "B and C must have the same number of groups, got ", B_in.size(1), " and ", C_in.size(1));
    if (present(D_in)) D = f32(*D_in);
    if (present(z_in)) {
      TORCH_CHECK(z_in->sizes() == u_in.sizes(), "z must have u's shape ", u_in.sizes(), ", got ", z_in->sizes());
      z = f32(*z_in);
    }
    if (present(bias_in)) delta_bias = f32(*bias_in);
    for (auto [t, name] : {std::pair{&D, "D"}, {&delta_bias, "delta_bias"}})
      TORCH_CHECK(!t->defined() || t->numel() == dim, name, " must be (dim,), got shape ", t->sizes());
    p.u = u.data_ptr();
    p.delta = delta.data_ptr();
    p.A = A.data_ptr<float>();
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    p.D = D.defined() ? D.data_ptr<float>() : nullptr;
    p.z = z.defined() ? z.data_ptr() : nullptr;
    p.delta_bias = delta_bias.defined() ? delta_bias.data_ptr<float>() : nullptr;
    p.batch = batch;
    p.dim = dim;
    p.L = L;
    p.N = N;
    p.groups = groups;
    p.bc_stride_l = N;
    p.bc_stride_n = 1;
    p.delta_softplus = delta_softplus;
    p.dtype = dlk::DType::F32;
    p.num_sms = 1;
  }

  int64_t n_chunks() const { return (p.L + dlk::kScanChunk - 1) / dlk::kScanChunk; }
};

// (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus) {
  ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
  const auto opts = in.u.options();
  at::Tensor out = new_buffer({in.p.batch, in.p.dim, in.p.L}, opts);
  at::Tensor states = new_buffer({in.p.batch, in.p.dim, in.n_chunks(), in.p.N}, opts);
  in.p.out = out.data_ptr();
  in.p.states = states.data_ptr<float>();
  if (in.p.batch > 0) dlk::selective_scan_fwd_cpu(in.p, aten_parallel_for);
  return {out.to(u.scalar_type()), states};
}

// (du, ddelta, dz or empty: u's dtype; dA, dB, dC: fp32 in A's, B's, C's shapes; dD, ddelta_bias:
// fp32 (dim,) or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast) {
  ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
  const dlk::SelectiveScanFwdParams& p = in.p;
  check_cpu(dout, "dout");
  TORCH_CHECK(dout.sizes() == u.sizes(), "dout must have u's shape ", u.sizes(), ", got ", dout.sizes());
  TORCH_CHECK(states.sizes() == at::IntArrayRef({p.batch, p.dim, in.n_chunks(), p.N}) &&
                  states.scalar_type() == at::kFloat,
              "states must be the forward's fp32 (batch, dim, n_chunks, N) tensor, got ", states.sizes());
  const at::Tensor dout32 = f32(dout), states32 = states.contiguous();
  at::Tensor dlast32;
  if (present(dlast)) {
    TORCH_CHECK(dlast->numel() == p.batch * p.dim * p.N, "dlast must be (batch, dim, N), got ", dlast->sizes());
    dlast32 = f32(*dlast);
  }
  const auto opts = in.u.options();
  const int64_t dpg = p.dim / p.groups;
  // Enough (batch, group, channel block) tasks for two per thread; each owns an L x N partial.
  const int64_t want = (2 * at::get_num_threads() + p.batch * p.groups - 1) / std::max<int64_t>(p.batch * p.groups, 1);
  const int64_t n_dblocks = std::clamp<int64_t>(want, 1, dpg);
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
  at::Tensor dbias = in.delta_bias.defined() ? new_buffer({p.batch, p.dim}, opts) : at::Tensor();
  q.dout = dout32.data_ptr();
  q.dlast = dlast32.defined() ? dlast32.data_ptr<float>() : nullptr;
  q.du = du.data_ptr();
  q.ddelta = ddelta.data_ptr();
  q.dz = dz.defined() ? dz.data_ptr() : nullptr;
  q.dA = dA.data_ptr<float>();
  q.dB = dB.data_ptr<float>();
  q.dC = dC.data_ptr<float>();
  q.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
  q.ddelta_bias = dbias.defined() ? dbias.data_ptr<float>() : nullptr;
  q.n_dblocks = n_dblocks;
  if (p.batch > 0) {
    dlk::selective_scan_bwd_cpu(q, aten_parallel_for);
  } else {
    for (at::Tensor* t : {&dA, &dB, &dC, &dD, &dbias}) if (t->defined()) t->zero_();
  }
  // Partials summed in a fixed order; variable B/C back to (batch, G, N, L).
  auto finish_bc = [&](const at::Tensor& t, bool variable) {
    return variable ? t.sum(2).transpose(2, 3).contiguous() : t.sum(0);
  };
  const auto dtype = u.scalar_type();
  auto empty = [&](at::ScalarType t) { return at::empty({0}, opts.dtype(t)); };  // distinct outputs
  return {du.to(dtype), ddelta.to(dtype), dA.sum(0), finish_bc(dB, p.variable_B), finish_bc(dC, p.variable_C),
          dD.defined() ? dD.sum(0) : empty(at::kFloat), dz.defined() ? dz.to(dtype) : empty(dtype),
          dbias.defined() ? dbias.sum(0) : empty(at::kFloat)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "dlkern CPU C++ kernels; same launchers and signatures as dlkern.kernels (Triton).";
  m.def("selective_scan_fwd", &selective_scan_fwd,
        "Selective scan forward (csrc/scan/selective_scan.h). B, C: (batch, G, N, L) or (dim, N).\n"
        "Returns (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32: the state"
        " at the end of every chunk of 64 steps).",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"));
  m.def("selective_scan_bwd", &selective_scan_bwd,
        "Selective scan backward; dlast is the gradient of the last state or None.\nReturns (du,"
        " ddelta, dA, dB, dC, dD, dz, ddelta_bias): du, ddelta, dz in u's dtype, the rest fp32;"
        " absent ones empty.",
        py::arg("dout"), py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"),
        py::arg("states"), py::arg("dlast"));
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
