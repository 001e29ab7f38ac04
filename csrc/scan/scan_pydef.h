// The Python-visible definitions of the selective scan launchers: the same docs and argument
// names in dlkern._C, _C_emu (csrc/module.cpp) and _C_cpu (csrc/cpu/bindings.cpp).
// Needs pybind11 and its tensor casters: include it after <torch/extension.h>.
#pragma once

#include <torch/extension.h>

namespace dlk_scan {

template <typename Fwd, typename Bwd>
void def_selective_scan(pybind11::module_& m, Fwd fwd, Bwd bwd) {
  namespace py = pybind11;
  m.def("selective_scan_fwd", fwd,
        "Selective scan forward (csrc/scan/selective_scan.h). B, C: (batch, G, N, L) or (dim, N);\n"
        "initial_state: (batch, dim, N) or None; seq_idx: (batch, L) int32 sequence ids or None.\n"
        "Returns (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32: the state"
        " at the end of every chunk of 64 steps).",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("initial_state") = py::none(),
        py::arg("seq_idx") = py::none());
  m.def("selective_scan_bwd", bwd,
        "Selective scan backward; dlast is the gradient of the last state or None.\nReturns (du,"
        " ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state): du, ddelta, dz in u's dtype, the rest fp32;"
        " absent ones empty.",
        py::arg("dout"), py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"),
        py::arg("states"), py::arg("dlast"), py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none());
}

}  // namespace dlk_scan
