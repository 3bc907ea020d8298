"""Atomic writes and a full disk said plainly: on a real 256 KiB tmpfs, in each form a writer reports it
(``torch.save``'s RuntimeError, safetensors' SafetensorError, Python's ENOSPC), and errors that are not
a full disk passed on as they were."""

from __future__ import annotations

import errno
import re

import pytest
import torch
from full_disk import fill, small_disk  # noqa: F401
from safetensors.torch import save_file

from ambinb import files

BIG = 400_000 // 4  # float32 values: a 400 KB tensor, more than the whole 256 KiB tmpfs


def no_space(path) -> str:
    return re.escape(f"no space left on device while writing {path}")


def test_torch_save_on_a_full_disk_says_so_and_keeps_the_previous_file(small_disk):  # noqa: F811
    path = small_disk / "state.pt"
    torch.save({"step": 3}, path)
    with pytest.raises(OSError, match=no_space(path)) as info:
        with files.atomic(path) as tmp:
            torch.save({"step": 6, "big": torch.ones(BIG)}, tmp)
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, RuntimeError) and "unexpected pos" in str(info.value.__cause__)
    assert sorted(p.name for p in small_disk.iterdir()) == ["state.pt"]  # no temporary left
    assert torch.load(path)["step"] == 3


def test_safetensors_on_a_full_disk_says_so(small_disk):  # noqa: F811
    path = small_disk / "adapter"
    with pytest.raises(OSError, match=no_space(path)) as info:
        with files.atomic(path) as tmp:
            tmp.mkdir()
            (tmp / "adapter_config.json").write_text("{}")
            save_file({"w": torch.ones(BIG)}, str(tmp / "adapter_model.safetensors"))
    assert type(info.value.__cause__).__name__ == "SafetensorError"
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT])
def test_an_os_error_for_lack_of_space_says_so_on_any_disk(tmp_path, number):
    path = tmp_path / "labels.csv"
    files.write_atomic(path, "old\n")

    def writer(tmp):
        tmp.write_text("half")
        raise OSError(number, "No space left on device")

    with pytest.raises(OSError, match=no_space(path)):
        with files.atomic(path) as tmp:
            writer(tmp)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


def test_other_errors_pass_as_they_were_and_leave_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    files.write_atomic(path, b"old")
    for err in (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                PermissionError(errno.EACCES, "Permission denied"), KeyboardInterrupt()):
        with pytest.raises(type(err)) as info:
            with files.atomic(path) as tmp:
                tmp.write_bytes(b"half")
                raise err
        assert info.value is err, "a disk with room: the writer's own error, not a full disk"
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_interrupt_on_a_full_disk_stays_an_interrupt(small_disk):  # noqa: F811
    fill(small_disk, leave=0)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic(small_disk / "x.pt") as tmp:
            tmp.write_bytes(b"")
            raise KeyboardInterrupt
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_error_number_reads_oserrors_causes_and_rusts_os_error():
    assert files.error_number(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert files.error_number(RuntimeError("Error while serializing: I/O error: No space left on device "
                                           "(os error 28)")) == 28
    assert files.error_number(RuntimeError("unexpected pos 704 vs 598")) is None
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert files.error_number(outer) == errno.EDQUOT


def test_write_atomic_and_folders_replace_what_was_there(tmp_path):
    assert files.write_atomic(tmp_path / "a" / "x.txt", "text") == tmp_path / "a" / "x.txt"
    files.write_atomic(tmp_path / "a" / "x.txt", b"bytes")
    assert (tmp_path / "a" / "x.txt").read_bytes() == b"bytes"
    for content in ("first", "second"):
        with files.atomic(tmp_path / "adapter") as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "adapter"]
    assert files.temporary(tmp_path / "checkpoint.pt").name.startswith(".checkpoint.pt.")
    assert files.temporary(tmp_path / "c.pt").name.endswith(".tmp") and not files.is_full(tmp_path)
