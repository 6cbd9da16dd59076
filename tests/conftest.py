import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

from discovery import task_from_rows, wrap_model  # noqa: E402


def token_rows(n=6, length=6, seed=0, vocab=tiny.VOCAB, pos=2):
    """Rows whose corrupted prompt differs at one position; the answer is the clean token there."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        clean = torch.randint(0, vocab, (length,), generator=g).tolist()
        corrupted = list(clean)
        corrupted[pos] = (clean[pos] + 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))) % vocab
        rows.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[pos],
                     "wrong_id": corrupted[pos]})
    return rows


@pytest.fixture(scope="module")
def one_thread():
    """Many small forwards run slower with two threads, and far slower when the machine's cores are
    busy (threads spin waiting for each other); results do not depend on it. Modules that need it:
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models():
    return {fam: wrap_model(tiny.build(fam)) for fam in tiny.FAMILIES}


@pytest.fixture(scope="session")
def task():
    return task_from_rows(token_rows(), vocab_size=tiny.VOCAB)


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts Ray down at the end of the test session, whoever started it."""
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """One small local Ray shared by the test session (ray.init costs seconds): 2 CPUs of resources
    whatever the machine, no dashboard, token auth off (Ray 2.60 turns it on for new local clusters).
    Tests that need other topologies (ray.cluster_utils.Cluster) start their own after `ray.shutdown()`
    and must leave Ray shut down, as the last Ray test of their module: the next module that asks for
    this fixture finds Ray down and inits it again (hence module scope, not session)."""
    import os

    ray = _ray_session
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray
