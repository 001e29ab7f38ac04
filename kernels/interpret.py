"""Whether Triton's CPU interpreter was enabled (``TRITON_INTERPRET=1``) when these kernels were
defined: the interpreter only applies to kernels defined after it is set, so this is read once,
before any kernel module defines its kernels."""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
