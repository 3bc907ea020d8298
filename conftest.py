"""Test-session settings shared by the unit tests (tests/) and the notebook tests (nbval on notebooks/).

Run folders written during tests go to a temporary folder, never to the user's ``runs/``; the toy
corpus and the tiny model are deterministic caches and are shared with normal use.
"""

import os
import tempfile

os.environ.setdefault("AMBINB_RUN_ROOT", tempfile.mkdtemp(prefix="ambinb-test-runs-"))
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
