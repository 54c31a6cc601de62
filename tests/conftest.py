"""Shared test set-up: everything runs offline, with small models and generated data."""

import os

# Before huggingface_hub/datasets are imported: never wait on a hub that cannot be reached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402  (after the environment above)
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core CPU run many times faster (and deterministically) on one thread.

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def accelerator():
    """A single-process CPU ``accelerate.Accelerator``."""
    from accelerate import Accelerator

    return Accelerator(cpu=True)
