"""Shared by the perf tests: the environment ``dlkern perf`` subprocesses run in."""
import os


def clean_env():
    """The test environment without TRITON_INTERPRET (the tests' conftest enables the interpreter,
    which changes the launch configurations) and without the NaN-fill debug mode."""
    return {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DLKERN_DEBUG_NAN_FILL")}
