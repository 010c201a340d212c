"""Shared by the memory tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Byte counts do not depend on the thread count; many tiny kernels run faster on one thread
    when the 2-core machine is shared (OpenMP threads otherwise wait for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
