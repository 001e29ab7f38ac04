"""Session fixture: the test kernels of tests/emu/kernels built against the CUDA CPU emulation."""
import pytest

from emu_build import build_planted, cxx_unavailable


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    reason = cxx_unavailable()
    if reason:
        pytest.skip(reason)
    return build_planted(tmp_path_factory.mktemp("emu_build"), "dlk_emu_planted")
