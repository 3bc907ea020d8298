"""Test-session settings shared by the unit tests (tests/) and the notebook tests (nbval on notebooks/).

Run folders written during tests go to a temporary folder, never to the user's ``runs/``; the toy
corpus and the tiny model are deterministic caches and are shared with normal use (each is built under
a lock, so parallel workers wait for one build).

``make test`` runs the tests on every core with pytest-xdist. Each worker writes its run folders
under its own ``$AMBINB_RUN_ROOT/<worker>``; the tests of one file stay on one worker (its module
fixtures are built once), and the notebooks all run on one, in order, since 04 and 05 start from the
SFT run that 03 leaves (``init_from: sft``). The scheduler overrides ``_split_scope``, the hook
xdist's own ``--dist loadfile`` overrides; its ``--dist loadgroup`` marks are ignored under pytest 9.2
(xdist 3.8.0 renames ``item._nodeid``, which pytest 9.2 no longer reads).
"""

import os
import tempfile

os.environ.setdefault("AMBINB_RUN_ROOT", tempfile.mkdtemp(prefix="ambinb-test-runs-"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0, gw1, ...: one run root per worker
    os.environ["AMBINB_RUN_ROOT"] = os.path.join(os.environ["AMBINB_RUN_ROOT"], os.environ["PYTEST_XDIST_WORKER"])
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Notebooks under nbval run in the fast dev mode (params/fast_dev.yaml: a few steps, a few test
    utterances), so every notebook is executed end to end without a full training run."""
    if str(item.path).endswith(".ipynb"):
        os.environ["AMBINB_FAST_DEV"] = "1"
    else:
        os.environ.pop("AMBINB_FAST_DEV", None)


def _scope(nodeid: str) -> str:
    """A test's unit of work for xdist: its file, or ``notebooks`` for every notebook cell."""
    path = nodeid.split("::", 1)[0]
    return "notebooks" if path.endswith(".ipynb") else path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The notebooks first (they are the longest unit of work: a worker starts on them at once), each
    in its own cell order; the rest in collection order."""
    items.sort(key=lambda item: _scope(item.nodeid) != "notebooks")


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pragma: no cover - without pytest-xdist the tests run in one process
    pass
else:
    class _ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        """Each test file on one worker (its module fixtures are built once); the notebooks all on one."""
        return _ByFile(config, log)
