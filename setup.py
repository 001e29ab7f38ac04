"""Build dlkern and its compiled parts.

* ``dlkern._C``: the CUDA C++ kernels in ``csrc/`` bound to torch. Built when ``nvcc`` is found and
  torch is a CUDA build (or forced with ``DLKERN_BUILD_CUDA=1``; ``DLKERN_BUILD_CUDA=0`` skips it).
  It compiles and links on a machine without a GPU. Kernel ``.cu`` files include no torch header
  (they compile in seconds); the torch-facing translation units are the binding files, one per op
  family beside its kernels (``csrc/<family>/*_binding.cpp``, ATen's Tensor and per-op headers
  only), and the module definition ``csrc/module.cpp``, the only one with ``<torch/extension.h>``.
* ``dlkern._C_emu``: the same kernel sources compiled with the host C++ compiler against the CPU
  emulation layer in ``csrc/emu`` (see its README), so the CUDA kernels run on CPU tensors in the
  ordinary test suite (``DLKERN_CUDA_EMULATE=1``). Built whenever a C++20 compiler works
  (``DLKERN_BUILD_EMU=0|1`` forces it off/on); ``DLKERN_EMU_ASAN=1`` instruments it with
  AddressSanitizer (run it with libasan and libstdc++ preloaded: csrc/emu/README.md).
* ``dlkern._C_cpu``: CPU C++ kernels (``csrc/cpu`` binding + ``csrc/**/*_cpu.cpp``), the fast
  default path on CPU tensors of ops whose reference is a slow recurrence (selective scan). Built
  whenever a C++20 compiler works (``DLKERN_BUILD_CPU=0|1`` forces it off/on).
* The Triton kernels in ``kernels/`` ship as the subpackage ``dlkern.kernels``. A package called
  ``kernels`` exists (the Hub's, which transformers imports): imported under that top-level name
  from a checkout's root, ``kernels/__init__.py`` hands over to it (see that file).

Install with ``pip install -e . --no-build-isolation`` so the build sees the installed torch.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

def _load_toolchain():
    """dlkern/toolchain.py by path: the toolkit search and nvcc flags that ``dlkern perf`` shares."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_dlkern_toolchain", os.path.join(ROOT, "dlkern", "toolchain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_toolchain = _load_toolchain()
find_cuda_home, CUDA_ARCHS = _toolchain.find_cuda_home, _toolchain.CUDA_ARCHS


def log(msg):
    print(f"[dlkern setup] {msg}", file=sys.stderr)


def pip_cuda_include_dirs():
    """Headers of the pip-installed CUDA libraries (cusparse.h, cublas_v2.h, ...) that the ATen CUDA
    headers include: `site-packages/nvidia/cu13/include` or, on CUDA 12 wheels, one folder per lib."""
    dirs = []
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def want_cuda():
    flag = os.environ.get("DLKERN_BUILD_CUDA")
    if flag not in (None, "", "0", "1"):
        raise SystemExit(f"DLKERN_BUILD_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "DLKERN_BUILD_CUDA=0"
    try:
        import torch
    except ImportError:
        reason = "torch is not installed in the build environment (use --no-build-isolation)"
        if flag == "1":
            raise SystemExit(f"DLKERN_BUILD_CUDA=1 but {reason}")
        return False, reason
    cuda_home = find_cuda_home()
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if problems:
        if flag == "1":
            raise SystemExit("DLKERN_BUILD_CUDA=1 but " + "; ".join(problems))
        return False, "; ".join(problems)
    os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    return True, f"CUDA toolkit at {cuda_home}"


def binding_sources():
    """The torch-facing C++ files of dlkern._C and dlkern._C_emu: the module definition and the
    binding file of each op family (not csrc/cpu/bindings.cpp: that one is dlkern._C_cpu's)."""
    return ["csrc/module.cpp"] + sorted(glob.glob("csrc/**/*_binding.cpp", recursive=True))


def kernel_sources():
    return sorted(glob.glob("csrc/**/*.cu", recursive=True))


def cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    sources = binding_sources() + kernel_sources()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
    gencode.append(f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}")
    # The toolkit's headers before the pip wheels' partial copies (nvidia/cu13/include has a
    # cuda_runtime.h but not the crt/ headers it includes).
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(os.environ["CUDA_HOME"], "include")]
    include_dirs += pip_cuda_include_dirs()
    return CUDAExtension(
        name="dlkern._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=[("DLK_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],  # torch >= 2.10 headers require C++20
            "nvcc": [*_toolchain.NVCC_FLAGS, *gencode],
        },
    )


def cxx20_problems():
    """Why the host C++ builds (dlkern._C_emu, dlkern._C_cpu) cannot be made here, if anything."""
    problems = []
    try:
        import torch  # noqa: F401
    except ImportError:
        problems.append("torch is not installed in the build environment (use --no-build-isolation)")
    cxx = os.environ.get("CXX", "c++")
    try:
        works = subprocess.run([cxx, "-std=c++20", "-fsyntax-only", "-x", "c++", "-"],
                               input="int main() { return 0; }\n", capture_output=True, text=True,
                               timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        works = False
    if not works:
        problems.append(f"no working C++20 compiler ({cxx})")
    return problems


def want_emu():
    flag = os.environ.get("DLKERN_BUILD_EMU")
    if flag not in (None, "", "0", "1"):
        raise SystemExit(f"DLKERN_BUILD_EMU must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "DLKERN_BUILD_EMU=0"
    problems = [] if sys.platform.startswith("linux") else ["the emulation runtime needs Linux"]
    problems += cxx20_problems()
    if problems:
        if flag == "1":
            raise SystemExit("DLKERN_BUILD_EMU=1 but " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, "C++ compiler " + os.environ.get("CXX", "c++")


def _write_if_changed(path, text):
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return  # keep the timestamp: ninja does not rebuild
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def emu_extension():
    """dlkern._C_emu. Every csrc/**/*.cu is compiled as C++ through a generated wrapper in
    build/emu_src that first includes emu/poison.h (unsupported CUDA features fail to compile);
    the binding files get a wrapper too (without poison.h), so their objects do not collide with
    dlkern._C's. The emulation runtime is csrc/emu/*.cpp."""
    from torch.utils.cpp_extension import CppExtension

    sources = sorted(glob.glob("csrc/emu/*.cpp"))
    for src in binding_sources() + kernel_sources():
        wrapper = os.path.join("build", "emu_src", os.path.splitext(os.path.relpath(src, "csrc"))[0] + "_emu.cpp")
        _write_if_changed(wrapper, "// Generated by setup.py for dlkern._C_emu.\n"
                          + ('#include "emu/poison.h"\n' if src.endswith(".cu") else "")
                          + f'#include "{os.path.join(ROOT, src)}"\n')
        sources.append(wrapper)
    cflags = ["-O2", "-std=c++20", "-include", os.path.join(ROOT, "csrc", "emu", "cuda_emu.h"), "-pthread",
              "-Wno-unknown-pragmas"]  # #pragma unroll is for nvcc
    ldflags = ["-pthread"]
    if os.environ.get("DLKERN_EMU_ASAN") == "1":
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    return CppExtension(
        name="dlkern._C_emu",
        sources=sources,
        # The shims (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h) first.
        include_dirs=[os.path.join(ROOT, "csrc", "emu", "include"), os.path.join(ROOT, "csrc")],
        define_macros=[("DLK_EMULATION", "1")],
        extra_compile_args={"cxx": cflags},
        extra_link_args=ldflags,
    )


def want_cpu():
    flag = os.environ.get("DLKERN_BUILD_CPU")
    if flag not in (None, "", "0", "1"):
        raise SystemExit(f"DLKERN_BUILD_CPU must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "DLKERN_BUILD_CPU=0"
    problems = cxx20_problems()
    if problems:
        if flag == "1":
            raise SystemExit("DLKERN_BUILD_CPU=1 but " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, "C++ compiler " + os.environ.get("CXX", "c++")


def cpu_extension():
    """dlkern._C_cpu: plain C++ kernels (no CUDA), parallel over ATen's intra-op thread pool."""
    from torch.utils.cpp_extension import CppExtension

    sources = ["csrc/cpu/bindings.cpp"] + sorted(glob.glob("csrc/**/*_cpu.cpp", recursive=True))
    # -O3 and no libm errno/trap semantics so the per-state loops vectorize (reductions included);
    # NaN and inf still propagate (no -ffinite-math-only).
    cflags = ["-O3", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
              "-fassociative-math",
              # at::parallel_for is inline: without OpenMP here it runs serially. The runtime is the
              # libgomp.so.1 torch has already loaded (same soname), so one thread pool.
              "-fopenmp"]
    return CppExtension(name="dlkern._C_cpu", sources=sources, include_dirs=[os.path.join(ROOT, "csrc")],
                        extra_compile_args={"cxx": cflags}, extra_link_args=["-fopenmp"])


def build_setup_kwargs():
    kwargs = dict(
        packages=find_packages(include=["dlkern", "dlkern.*"]) + ["dlkern.kernels"],
        package_dir={"dlkern.kernels": "kernels"},
        ext_modules=[],
        cmdclass={},
    )
    build, reason = want_cuda()
    if build:
        from torch.utils.cpp_extension import BuildExtension

        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        kwargs["ext_modules"].append(cuda_extension())
        kwargs["cmdclass"]["build_ext"] = BuildExtension.with_options(use_ninja=bool(shutil.which("ninja")))
        log(f"building dlkern._C with CUDA kernels for sm_{', sm_'.join(CUDA_ARCHS)} ({reason})")
    else:
        log(f"NOT building the CUDA extension dlkern._C: {reason}. "
            "dlkern will use the Triton and reference backends.")
    build_emu, emu_reason = want_emu()
    if build_emu:
        from torch.utils.cpp_extension import BuildExtension

        kwargs["ext_modules"].append(emu_extension())
        kwargs["cmdclass"].setdefault("build_ext", BuildExtension.with_options(use_ninja=bool(shutil.which("ninja"))))
        asan = " with AddressSanitizer" if os.environ.get("DLKERN_EMU_ASAN") == "1" else ""
        log(f"building dlkern._C_emu, the CUDA kernels on the CPU emulation layer{asan} ({emu_reason})")
    else:
        log(f"NOT building the CUDA emulation dlkern._C_emu: {emu_reason}")
    build_cpu, cpu_reason = want_cpu()
    if build_cpu:
        from torch.utils.cpp_extension import BuildExtension

        kwargs["ext_modules"].append(cpu_extension())
        kwargs["cmdclass"].setdefault("build_ext", BuildExtension.with_options(use_ninja=bool(shutil.which("ninja"))))
        log(f"building dlkern._C_cpu, the CPU C++ kernels ({cpu_reason})")
    else:
        log(f"NOT building the CPU kernels dlkern._C_cpu: {cpu_reason}")
    return kwargs


setup(**build_setup_kwargs())
