"""Progress bars: a text bar in a terminal, a widget in a kernel, one line plus a log file in a papermill run."""

import os
import re
from pathlib import Path

from ambinb import progress


def test_a_logged_bar_prints_one_line_and_logs_the_details(tmp_path, monkeypatch, capsys):
    log = tmp_path / "run" / "03_sft.log"
    monkeypatch.setenv(progress.RUN_LOG_ENV, str(log))
    assert progress.where() == "log"
    for _ in progress.bar(range(4), desc="encode", unit="batch"):
        pass
    train = progress.bar(total=3, desc="train", unit="step")
    for _ in range(3):
        train.update()
    train.set_postfix_str("loss=0.25", refresh=False)
    train.close()
    train.close()                                              # a second close prints nothing more
    shown = [re.sub(r"in \d\d:\d\d", "in T", line) for line in capsys.readouterr().out.splitlines()]
    assert shown == ["encode: 4/4 batch in T", "train: 3/3 step in T, loss=0.25"]
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert all(re.match(stamp, line) for line in lines), lines
    assert any(re.match(stamp + r"encode:\s+0%\|", line) for line in lines)      # the start of the loop
    assert re.search(r"done: train: 3/3 step in \d\d:\d\d, loss=0.25$", lines[-1])


def test_a_disabled_bar_leaves_nothing(tmp_path, monkeypatch, capsys):
    log = tmp_path / "x.log"
    monkeypatch.setenv(progress.RUN_LOG_ENV, str(log))
    assert list(progress.bar(range(3), desc="evaluate", disable=True)) == [0, 1, 2]
    assert capsys.readouterr().out == "" and not log.exists()


def test_a_terminal_gets_tqdm_text_bar(monkeypatch, capsys):
    monkeypatch.delenv(progress.RUN_LOG_ENV, raising=False)
    assert progress.where() == "terminal" and not progress.in_jupyter_kernel()
    bar = progress.bar(total=2, desc="sweep")
    assert type(bar) is progress.text_tqdm
    bar.update(2)
    bar.close()
    assert "sweep: 100%" in capsys.readouterr().err


def test_logging_to_sets_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.RUN_LOG_ENV, raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert progress.log_path(tmp_path / "fold0" / "03_sft.ipynb") == tmp_path / "fold0" / "03_sft.log"
    with progress.logging_to(tmp_path / "a.log") as path:
        assert os.environ[progress.RUN_LOG_ENV] == str(path) == str(tmp_path / "a.log")
        assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert progress.RUN_LOG_ENV not in os.environ and os.environ["TQDM_DISABLE"] == "0"
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_an_executed_notebook_logs_progress_beside_its_output(tmp_path, monkeypatch):
    import papermill

    from ambinb import notebook

    seen = {}

    def fake_execute(src, out, **kwargs):
        seen.update(log=os.environ.get(progress.RUN_LOG_ENV), disable=os.environ.get("TQDM_DISABLE"))
        Path(out).write_text("{}")

    monkeypatch.delenv(progress.RUN_LOG_ENV, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    out = notebook.execute("06_ablations", tmp_path / "all" / "ablations" / "06_ablations.ipynb", {})
    assert seen == {"log": str(tmp_path / "all" / "ablations" / "06_ablations.log"), "disable": "1"}
    assert out.exists() and progress.RUN_LOG_ENV not in os.environ
