"""The book, built from a small fake sweep: 06_ablations executed on run folders written by
``ambinb.results.write_evaluation``, then ``ambinb.book.assemble`` and ``ambinb.book.build`` into a copy
of ``book/`` in a temporary folder (the user's built book is never touched). Checks the pages and
figures exist, the numbers on the results page against a direct computation, and that headless
Chromium renders the results page into a picture that is not blank.

Chromium: Debian's ``chromium``. The session fixture installs it with ``apt-get install -y chromium``
when it is missing and apt-get is there and we are root; otherwise the screenshot test is skipped
with the reason. The module takes about 30 s (06_ablations ~10 s, the book build ~10 s, the
screenshot ~5 s) plus, once per machine, the Chromium install (~1-2 min); they run in ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup
from PIL import Image

from ambinb import aggregate, book, metrics, notebook, results
from ambinb.paths import run_dir

CLASSES = ["anger", "happiness", "sadness", "neutral"]
FOLDS = [0, 1]
N_UTT = 12
# strategy -> share of noise mixed into the truth (lower: closer to p_gt); grpo_z is left out on
# purpose, so the results page must show it as missing
NOISE = {"base": 0.8, "classical": 0.5, "sft": 0.3, "sft_ce": 0.5, "sft_nocot": 0.4, "dpo": 0.2, "dpo_ce": 0.4,
         "grpo": 0.6}
CROSS = aggregate.cross_name("crema_d", "iemocap")
CROSS_NOISE = {"sft": 0.5, "sft_nocot": 0.7}
SCREEN = (1280, 2000)
INLINE = "module://matplotlib_inline.backend_inline"


def _truth(dataset: str, fold: int) -> np.ndarray:
    seed = sum(map(ord, dataset)) * 10 + fold
    return np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)) * 0.7, size=N_UTT)


def _prediction(dataset: str, strategy: str, fold: int, noise: float) -> np.ndarray:
    seed = sum(map(ord, dataset + strategy)) * 10 + fold
    mix = np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)), size=N_UTT)
    return (1 - noise) * _truth(dataset, fold) + noise * mix


def write_fake_sweep(root: Path) -> list[Path]:
    """Run folders like a toy sweep's (every strategy in NOISE, folds 0-1) and a cross-domain SFT pair."""
    folders = []
    plan = [("toy", st, noise) for st, noise in NOISE.items()] + [(CROSS, st, n) for st, n in CROSS_NOISE.items()]
    for dataset, strategy, noise in plan:
        for k in FOLDS:
            out = run_dir(dataset, strategy, k, root)
            cfg = {"dataset": dataset, "strategy": strategy, "fold": k, "model": "tiny", "seed": 0, "bootstrap": 20,
                   "run_root": str(root), "lr": 1e-4, "layers": ["defaults.yaml", f"strategies/{strategy}.yaml"]}
            if dataset == CROSS:
                cfg.update(train_dataset="crema_d", test_dataset="iemocap")
            results.write_evaluation(out, [f"{dataset}-f{k}-u{i}" for i in range(N_UTT)], CLASSES,
                                     _truth(dataset, k), _prediction(dataset, strategy, k, noise),
                                     np.full(len(CLASSES), 0.25), cfg, extra={"wall_time_s": 12.0 + k})
            folders.append(out)
    return folders


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(html folder, run root, run folders, seconds per stage)`` of a book built from the fake sweep."""
    tmp = tmp_path_factory.mktemp("book")
    root = tmp / "runs"
    seconds = {}
    start = time.perf_counter()
    folders = write_fake_sweep(root)
    seconds["write runs"] = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits the environment: figures inline, as in a
        mp.setenv("MPLBACKEND", INLINE)        # report, not conftest's Agg (which would drop them from the page)
        notebook.execute("06_ablations", run_dir("all", "ablations", None, root) / "06_ablations.ipynb",
                         {"run_root": str(root), "folds": FOLDS, "bootstrap": 50})
    seconds["06_ablations"] = time.perf_counter() - start
    start = time.perf_counter()
    folder = book.copy_sources(tmp / "book")
    book.assemble(str(root), "toy", 0, book=folder)
    index = book.build(book=folder, strict=True, quiet=True)  # a Sphinx warning fails the build
    seconds["book build"] = time.perf_counter() - start
    print("timings:", {k: round(v, 1) for k, v in seconds.items()})
    return index.parent, root, folders, seconds


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (root and apt-get needed), else skip."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe:
        return exe
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium, and no apt-get to install Debian's chromium")
    if os.geteuid() != 0:
        pytest.skip("no chromium, and installing it with apt-get needs root (run: sudo apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:  # package lists may be missing or stale in a fresh container
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=300)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    exe = shutil.which("chromium")
    if done.returncode or not exe:
        pytest.skip(f"`apt-get install -y chromium` failed (exit {done.returncode}): {done.stderr[-500:]}")
    return exe


def _page(html_dir: Path, name: str) -> BeautifulSoup:
    path = html_dir / "generated" / f"{name}.html"
    assert path.exists(), f"{path} was not built"
    return BeautifulSoup(path.read_text(), "html.parser")


def _section(soup: BeautifulSoup, title: str):
    """The <section> whose heading starts with ``title``."""
    for heading in soup.find_all(["h1", "h2", "h3"]):
        if heading.get_text(" ", strip=True).startswith(title):
            return heading.find_parent("section")
    raise AssertionError(f"no section titled {title!r}; headings: "
                         f"{[h.get_text(strip=True) for h in soup.find_all(['h1', 'h2', 'h3'])]}")


def _rows(table) -> dict[tuple[str, str], dict[str, str]]:
    """A rendered results table as ``{(dataset or setting, strategy): {column: cell text}}``."""
    head = [th.get_text(" ", strip=True) for th in table.find("thead").find_all("th")]
    out = {}
    for tr in table.find("tbody").find_all("tr"):
        cells = [td.get_text(" ", strip=True) for td in tr.find_all("td")]
        out[(cells[0], cells[1])] = dict(zip(head, cells))
    return out


def _fold_mean_sd(dataset: str, strategy: str, metric: str) -> tuple[float, float]:
    """Mean and sd over folds of a metric, computed from the arrays the fake sweep wrote."""
    noise = CROSS_NOISE[strategy] if dataset == CROSS else NOISE[strategy]
    values = [getattr(metrics, metric)(_truth(dataset, k), _prediction(dataset, strategy, k, noise)).mean()
              for k in FOLDS]
    return float(np.mean(values)), float(np.std(values, ddof=1))


def test_book_dir_is_configurable(monkeypatch, tmp_path):
    assert book.book_dir().name == "book"
    monkeypatch.setenv(book.BOOK_DIR_ENV, str(tmp_path / "elsewhere"))
    assert book.book_dir() == tmp_path / "elsewhere"
    assert book.book_dir(tmp_path / "given") == tmp_path / "given"
    copied = book.copy_sources(tmp_path / "copy")
    assert {"_toc.yml", "_config.yml", "intro.md"} <= {p.name for p in copied.iterdir()}
    with pytest.raises(FileNotFoundError, match="_toc.yml"):
        book.copy_sources(tmp_path / "x", source=tmp_path / "copy" / "nothing")


def test_every_page_is_built(built):
    html, _, _, _ = built
    assert (html / "index.html").exists()
    for page in ("intro", "method", "running-at-scale"):
        assert (html / f"{page}.html").exists(), page
    for name in [*book.CHAPTERS, "reproducibility"]:
        assert (html / "generated" / f"{name}.html").exists(), name
    # no run made chapters 01-05 here: their pages say how to make them
    page = _page(html, "03_sft")
    title = book.chapter_title("03_sft")
    assert title.startswith("03 · ") and page.find("h1").get_text(strip=True).startswith(title)
    text = page.get_text(" ", strip=True)
    assert "does not exist yet" in text and "make report" in text


def test_results_page_shows_table2_with_the_right_numbers(built):
    html, _, _, _ = built
    table = _section(_page(html, "06_ablations"), "Table 2").find("table")
    assert table is not None, "Table 2 is not rendered as a table"
    rows = _rows(table)
    for strategy in [*NOISE, "prior"]:
        if strategy in ("sft_ce", "sft_nocot", "dpo_ce"):
            continue  # ablation variants: Figure 2 and Table 3
        assert ("toy", strategy) in rows, (strategy, list(rows))
    assert rows[("toy", "grpo_z")]["js"] == "missing"
    mean, sd = _fold_mean_sd("toy", "sft", "js")
    assert rows[("toy", "sft")]["js"].startswith(f"{mean:.3f} ± {sd:.3f} [")
    shown = [s for s in NOISE if ("toy", s) in rows]
    best = min(shown, key=lambda s: _fold_mean_sd("toy", s, "js")[0])
    js_column = [th.get_text(strip=True) for th in table.find("thead").find_all("th")].index("js")
    bold = [tr.find_all("td")[1].get_text(strip=True) for tr in table.find("tbody").find_all("tr")
            if tr.find_all("td")[js_column].find("strong")]
    assert bold == [best], "the lowest mean JS is the one bold cell of the JS column"


def test_results_page_shows_figure2_and_table3(built):
    html, root, _, _ = built
    soup = _page(html, "06_ablations")
    images = _section(soup, "Figure 2").find_all("img")
    assert len(images) == 2, "Figure 2: JS and BC, then R2 and Brier"
    for img in images:
        png = (html / "generated" / img["src"]).resolve()
        assert png.exists() and png.suffix == ".png", png
        with Image.open(png) as picture:
            assert picture.width > 400 and picture.height > 150
    for name in ("figure2.png", "figure2_r2_brier.png", "table2.md", "table3.md"):
        assert (run_dir("all", "ablations", None, root) / name).exists(), name

    rows = _rows(_section(soup, "Table 3").find("table"))
    assert set(rows) == {("toy (in-domain)", "sft"), ("toy (in-domain)", "sft_nocot"),
                         ("crema_d → iemocap (cross-domain)", "sft"), ("crema_d → iemocap (cross-domain)", "sft_nocot")}
    mean, sd = _fold_mean_sd(CROSS, "sft_nocot", "bc")
    assert rows[("crema_d → iemocap (cross-domain)", "sft_nocot")]["bc"].startswith(f"{mean:.3f} ± {sd:.3f}")
    assert rows[("crema_d → iemocap (cross-domain)", "sft")]["js (paper)"] == "0.38"  # the paper's beside ours


def test_reproducibility_page_lists_every_run_folder(built):
    html, root, folders, _ = built
    text = _page(html, "reproducibility").get_text(" ", strip=True)
    for folder in folders:
        assert folder.relative_to(root).as_posix() in text, folder
    commit = json.loads((folders[0] / "metrics.json").read_text())["env"]["git_commit"]  # as the runs recorded it
    assert commit.split("+")[0][:7] in text
    assert "12 s" in text and "13 s" in text  # wall times of folds 0 and 1


def test_results_page_renders_in_headless_chromium(built, chromium, tmp_path):
    html, _, _, _ = built
    shot = tmp_path / "results.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={SCREEN[0]},{SCREEN[1]}",
           (html / "generated" / "06_ablations.html").as_uri()]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    print(f"screenshot in {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == SCREEN
        rgb = np.asarray(img.convert("RGB"))
    not_white = (rgb < 235).any(axis=2).mean()
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = len(np.unique(packed))
    assert not_white > 0.03, f"only {not_white:.1%} of the screenshot is not white: blank page?"
    assert colours > 500, f"only {colours} distinct colours: nothing rendered?"
