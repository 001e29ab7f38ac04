"""Read machine code: disassemble a cubin, its resources, its loops and the opcodes that matter.

``cuobjdump -sass`` gives the instructions (address, predicate, opcode with modifiers, operands);
``cuobjdump -res-usage`` gives registers, stack (spills), shared and local memory per function.
A loop is the address range [target, branch] of a backward branch (``BRA`` to a lower address;
the ``BRA`` to itself that pads the end of every function is not one). The *hot loop* is the
innermost loop with the most instructions. Opcodes are counted by class (:data:`CLASSES`).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
from collections import Counter

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)", re.M)
_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")

# Width in bytes of a global access from its modifiers (no width modifier: 32 bits).
_WIDTH = {".128": 16, ".64": 8, ".U16": 2, ".S16": 2, ".U8": 1, ".S8": 1}


def _width(opcode: str) -> int:
    for mod, w in _WIDTH.items():
        if mod in opcode:
            return w
    return 4


def classify(opcode: str) -> list[str]:
    """The counted classes an instruction falls in (besides ``total``)."""
    base = opcode.split(".")[0]
    out = []
    if base in ("HGMMA", "HMMA", "UTMALDG", "UTMASTG", "LDGSTS", "LDS", "LDSM", "STS", "BAR", "MUFU", "MEMBAR",
                "CCTL", "LDL", "STL", "ATOMG", "ATOM", "RED", "REDG", "ATOMS", "WARPSYNC", "SHFL"):
        out.append(base)
    if base in ("LDG", "STG"):
        out.append(f"{base}.{_width(opcode) * 8}")
    if base == "LDGSTS":
        out.append(f"LDGSTS.{_width(opcode) * 8}")
    if base == "MUFU":
        out.append(opcode)           # MUFU.EX2, MUFU.RCP, ...
    return out


@dataclasses.dataclass
class Instr:
    addr: int
    pred: str
    opcode: str
    operands: str


@dataclasses.dataclass
class Function:
    name: str
    instrs: list
    registers: int = 0
    stack: int = 0           # bytes of stack frame (spills live here)
    shared: int = 0          # static shared memory, bytes
    local: int = 0

    def loops(self) -> list[tuple[int, int]]:
        """(start index, end index inclusive) of every backward branch's range."""
        index = {ins.addr: i for i, ins in enumerate(self.instrs)}
        out = []
        for i, ins in enumerate(self.instrs):
            if ins.opcode.split(".")[0] not in ("BRA", "JMP", "BRX"):
                continue
            m = re.search(r"0x([0-9a-f]+)", ins.operands)
            if not m:
                continue
            target = int(m.group(1), 16)
            if target < ins.addr and target in index:
                out.append((index[target], i))
        return out

    def hot_loop(self) -> tuple[int, int] | None:
        loops = self.loops()
        inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
        return max(inner, key=lambda lp: lp[1] - lp[0], default=None)

    def counts(self, span=None) -> dict[str, int]:
        instrs = self.instrs if span is None else self.instrs[span[0]:span[1] + 1]
        c = Counter()
        for ins in instrs:
            if ins.opcode.split(".")[0] == "NOP":
                continue
            c["total"] += 1
            for k in classify(ins.opcode):
                c[k] += 1
        return dict(sorted(c.items()))

    def global_bytes(self, span=None, kind="LDG") -> int:
        """Bytes one thread moves per pass over ``span`` with ``kind`` (LDG, STG or LDGSTS)."""
        instrs = self.instrs if span is None else self.instrs[span[0]:span[1] + 1]
        return sum(_width(i.opcode) for i in instrs if i.opcode.split(".")[0] == kind)


@functools.lru_cache(maxsize=None)
def _tool(name):
    from dlkern.toolchain import find_tool
    path = find_tool(name)
    if path is None:
        raise RuntimeError(f"{name} not found (CUDA toolkit bin/, triton/backends/nvidia/bin, PATH)")
    return path


def _run(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def parse_sass(text: str) -> dict[str, list]:
    """function name -> [Instr] from ``cuobjdump -sass`` or ``nvdisasm`` text."""
    out, current = {}, None
    for line in text.splitlines():
        f = _FUNC.match(line)
        if f:
            current = out.setdefault(f.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            current.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4).strip()))
    return out


def read_cubin(path: str, sass_cache: str | None = None) -> dict[str, Function]:
    """Every function of a cubin with its instructions and resources. The SASS text is written
    next to the cubin (``.sass``) so anyone can re-derive the counts."""
    sass_path = sass_cache or str(path) + ".sass"
    try:
        text = open(sass_path).read()
    except OSError:
        text = _run(_tool("cuobjdump"), "-sass", str(path))
        with open(sass_path, "w") as f:
            f.write(text)
    res = {m.group(1): tuple(map(int, m.groups()[1:])) for m in _RES.finditer(resource_usage(path))}
    funcs = {}
    for name, instrs in parse_sass(text).items():
        reg, stack, shared, local = res.get(name, (0, 0, 0, 0))
        funcs[name] = Function(name, instrs, reg, stack, shared, local)
    return funcs


def resource_usage(path: str) -> str:
    return _run(_tool("cuobjdump"), "-res-usage", str(path))


def nvdisasm_counts(path: str, function: str) -> dict[str, int]:
    """Opcode-class counts of one function from ``nvdisasm`` (an independent disassembler)."""
    text = _run(_tool("nvdisasm"), str(path))
    # nvdisasm prints ".text.<name>:" sections and "/*0010*/ OPCODE ..." lines.
    sections = re.split(r"^\s*\.text\.(\S+):\s*$", text, flags=re.M)
    for name, body in zip(sections[1::2], sections[2::2]):
        if name == function:
            c = Counter()
            for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", body):
                op = m.group(2)
                if op.split(".")[0] == "NOP":
                    continue
                c["total"] += 1
                for k in classify(op):
                    c[k] += 1
            return dict(c)
    raise KeyError(f"{function} not in {path}")
