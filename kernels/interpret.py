"""Whether Triton's CPU interpreter was enabled (``TRITON_INTERPRET``) when these kernels were
defined: the interpreter only applies to kernels defined after it is set, so this is read once,
before any kernel module defines its kernels. The answer is Triton's own (``triton.jit`` reads
``knobs.runtime.interpret``, which accepts 1/true/on/yes/y in any case), not a second parser."""
import os

try:
    from triton import knobs as _knobs
    INTERPRET = bool(_knobs.runtime.interpret)
except (ImportError, AttributeError):  # a triton without knobs read the variable this way
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
