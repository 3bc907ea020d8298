"""Rebuild the tiny stand-in from the default params: ``python -m ambinb.standin [--out DIR]``.

The repository ships the stand-in it builds (``models/tiny``, about 2 MB), so a fresh checkout
needs no build; this command rebuilds it from scratch (about 8-13 minutes on 2 cores): bit-identical on
the CPU and torch that built it (``machine`` in ``ambinb_tiny.json``), and on another CPU a model whose
float rounding, and so its weights, differ while its warm-up record agrees
(``tests/test_standin.py::test_default_build_is_reproducible`` checks both).
"""

from __future__ import annotations

import argparse
import shutil

from ambinb import config
from ambinb.paths import resolve_path
from ambinb.standin.build import build_tiny, tiny_spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where to build (default: the params' tiny_dir)")
    args = parser.parse_args(argv)
    cfg = config.resolve()
    out = resolve_path(args.out or cfg["tiny_dir"])
    if out.exists():
        shutil.rmtree(out)
    built = build_tiny(out, **tiny_spec(cfg))
    print(f"built the stand-in into {built}")


if __name__ == "__main__":
    main()
