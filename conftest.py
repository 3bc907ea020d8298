"""Test-session settings shared by the unit tests (tests/) and the notebook tests (nbval on notebooks/).

Run folders written during tests go to a temporary folder, never to the user's ``runs/``; the toy
corpus and the tiny model are deterministic caches and are shared with normal use.
"""

import os
import tempfile

os.environ.setdefault("AMBINB_RUN_ROOT", tempfile.mkdtemp(prefix="ambinb-test-runs-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
