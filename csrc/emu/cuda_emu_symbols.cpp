// The module's own symbol table: its static __shared__ objects (poisoned before every block) and
// the names of its kernels (for error messages). Internals: cuda_emu_runtime.h.
#include "emu/cuda_emu_runtime.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dlk_emu {
namespace rt {

// ---- symbols of this module: static __shared__ variables and kernel names ---------------------
const ModuleSymbols& module_symbols() {
  static const ModuleSymbols syms = [] {
    ModuleSymbols s;
    Dl_info info;
    link_map* lm = nullptr;
    if (!dladdr1(reinterpret_cast<void*>(&module_symbols), &info, reinterpret_cast<void**>(&lm),
                 RTLD_DL_LINKMAP) || lm == nullptr) {
      return s;
    }
    const std::string path = (lm->l_name && lm->l_name[0]) ? lm->l_name : "/proc/self/exe";
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return s;
    struct stat stbuf;
    void* map = MAP_FAILED;
    if (fstat(fd, &stbuf) == 0) map = mmap(nullptr, std::size_t(stbuf.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return s;
    const auto* base = static_cast<const unsigned char*>(map);
    const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
    if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_shoff == 0) return s;
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
    // Prefer the full symbol table; the dynamic one lacks internal-linkage symbols.
    for (unsigned type : {unsigned(SHT_SYMTAB), unsigned(SHT_DYNSYM)}) {
      for (unsigned i = 0; i < eh->e_shnum; ++i) {
        if (sh[i].sh_type != type) continue;
        s.have_symtab = type == SHT_SYMTAB;
        const auto* sym = reinterpret_cast<const ElfW(Sym)*>(base + sh[i].sh_offset);
        const char* strtab = reinterpret_cast<const char*>(base + sh[sh[i].sh_link].sh_offset);
        const std::size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
        for (std::size_t k = 0; k < n; ++k) {
          if (sym[k].st_shndx == SHN_UNDEF || sym[k].st_size == 0) continue;
          const char* name = strtab + sym[k].st_name;
          const unsigned kind = ELF64_ST_TYPE(sym[k].st_info);
          if (kind == STT_OBJECT && std::strstr(name, "B10dlk_shared")) {
            s.shared.emplace_back(reinterpret_cast<unsigned char*>(lm->l_addr + sym[k].st_value),
                                  std::size_t(sym[k].st_size));
          } else if (kind == STT_FUNC) {
            s.funcs.push_back({std::uintptr_t(lm->l_addr + sym[k].st_value), std::uintptr_t(sym[k].st_size), name});
          }
        }
      }
      if (!s.funcs.empty()) break;
    }
    munmap(map, std::size_t(stbuf.st_size));
    std::sort(s.shared.begin(), s.shared.end());
    s.shared.erase(std::unique(s.shared.begin(), s.shared.end()), s.shared.end());
    std::sort(s.funcs.begin(), s.funcs.end(), [](const FuncSym& a, const FuncSym& b) { return a.addr < b.addr; });
    if (!s.have_symtab) {
      std::fprintf(stderr, "dlkern CUDA emulator: %s has no symbol table (stripped?): static __shared__ "
                   "variables with internal linkage are not poisoned\n", path.c_str());
    }
    return s;
  }();
  return syms;
}

namespace {

// "void dlk::(anonymous namespace)::k<float, 1>(float const*, int)" -> "dlk::k<float, 1>"
std::string tidy_function_name(std::string name) {
  const std::string anon = "(anonymous namespace)::";
  for (std::size_t p; (p = name.find(anon)) != std::string::npos;) name.erase(p, anon.size());
  if (!name.empty() && name.back() == ')') {
    int depth = 0;
    for (std::size_t i = name.size(); i-- > 0;) {
      depth += name[i] == ')' ? 1 : name[i] == '(' ? -1 : 0;
      if (depth == 0) {
        name.resize(i);
        break;
      }
    }
  }
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  return name;
}

}  // namespace

std::string kernel_name(const KernelCall& call) {
  const auto& funcs = module_symbols().funcs;
  const auto addr = reinterpret_cast<std::uintptr_t>(call.kernel);
  auto it = std::upper_bound(funcs.begin(), funcs.end(), addr,
                             [](std::uintptr_t a, const FuncSym& f) { return a < f.addr; });
  if (it != funcs.begin() && addr < (it - 1)->addr + (it - 1)->size) {
    int status = 0;
    char* demangled = abi::__cxa_demangle((it - 1)->name.c_str(), nullptr, nullptr, &status);
    std::string name = status == 0 && demangled ? demangled : (it - 1)->name;
    std::free(demangled);
    return tidy_function_name(name);
  }
  return call.expr;
}

}  // namespace rt

}  // namespace dlk_emu
