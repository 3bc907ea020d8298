"""Run folder names with seeds (``fold<k>-seed<s>``), reading them back, and the folder an ``init_from`` run
starts from."""

from pathlib import Path

import pytest

from ambinb import config
from ambinb.paths import init_run_folder, parse_run_name, run_dir, run_folder


def test_a_seed_other_than_zero_gets_its_own_folder(tmp_path):
    assert run_dir("toy", "dpo", 1, root=tmp_path, seed=2) == tmp_path / "toy" / "dpo" / "fold1-seed2"
    assert run_dir("toy", "dpo", 1, root=tmp_path, seed=0) == tmp_path / "toy" / "dpo" / "fold1"
    assert run_dir("toy", "dpo", 1, root=tmp_path) == tmp_path / "toy" / "dpo" / "fold1"   # seed 0 is the default
    assert run_dir("toy", "dpo", 0, root=tmp_path, validation=4, seed=1) == \
        tmp_path / "toy" / "dpo" / "validation" / "fold0-val4-seed1"
    assert run_dir("toy", "dpo", 0, root=tmp_path, validation=4, seed=0) == \
        tmp_path / "toy" / "dpo" / "validation" / "fold0-val4"
    assert run_dir("toy", "labels", root=tmp_path, seed=3) == tmp_path / "toy" / "labels"  # no fold, no seed part


def test_run_folder_follows_the_seed_of_the_config(tmp_path):
    cfg = config.resolve(dataset="toy", strategy="dpo", fold=2, overrides={"seed": 3, "run_root": str(tmp_path)})
    assert run_folder(cfg) == tmp_path / "toy" / "dpo" / "fold2-seed3"
    assert run_folder({**cfg, "seed": 0}) == tmp_path / "toy" / "dpo" / "fold2"


@pytest.mark.parametrize(("name", "parsed"), [
    ("fold1", (1, 0)), ("fold1-seed2", (1, 2)), ("fold12-seed10", (12, 10)), ("fold0-seed0", (0, 0)),
    ("fold0-val4", None), ("fold0-val4-seed1", None), ("foo", None), ("fold", None), ("fold1-seed", None),
    ("fold1-seed2x", None), ("xfold1", None), ("validation", None),
])
def test_parse_run_name(name, parsed):
    assert parse_run_name(name) == parsed


@pytest.mark.parametrize(("fold", "seed"), [(0, 0), (1, 2), (4, 7)])
def test_parse_run_name_reads_run_dir_back(tmp_path, fold, seed):
    assert parse_run_name(run_dir("toy", "dpo", fold, root=tmp_path, seed=seed).name) == (fold, seed)


def test_init_run_folder_is_none_without_init_from(tmp_path):
    cfg = config.resolve(dataset="toy", strategy="dpo", fold=1,
                         overrides={"seed": 2, "run_root": str(tmp_path), "init_from": ""})
    assert init_run_folder(cfg) is None
    assert init_run_folder(config.resolve(dataset="toy", strategy="sft", fold=1)) is None  # sft starts from the base


def test_init_run_folder_is_the_seed_zero_run_of_init_from(tmp_path):
    cfg = config.resolve(dataset="toy", strategy="dpo", fold=1,
                         overrides={"seed": 2, "run_root": str(tmp_path), "init_from": "sft"})
    # every seed of dpo starts from the one sft run of its fold: fold1, not fold1-seed2
    assert init_run_folder(cfg) == tmp_path / "toy" / "sft" / "fold1"
    assert init_run_folder({**cfg, "seed": 0}) == tmp_path / "toy" / "sft" / "fold1"
    assert cfg["seed"] == 2   # the run's own config is left as it was
    assert run_folder(cfg) == tmp_path / "toy" / "dpo" / "fold1-seed2"


def test_init_run_folder_under_init_root(tmp_path):
    shared = tmp_path / "shared"
    cfg = config.resolve(dataset="toy", strategy="dpo", fold=0,
                         overrides={"seed": 1, "run_root": str(tmp_path / "variant"), "init_from": "sft",
                                    "init_root": str(shared)})
    assert init_run_folder(cfg) == shared / "toy" / "sft" / "fold0"
    assert run_folder(cfg) == tmp_path / "variant" / "toy" / "dpo" / "fold0-seed1"


def test_init_run_folder_keeps_the_split(tmp_path):
    cfg = config.resolve(dataset="toy", strategy="dpo", fold=0,
                         overrides={"seed": 1, "run_root": str(tmp_path), "init_from": "sft",
                                    "eval_split": "validation", "validation_fold": 4})
    assert run_folder(cfg) == tmp_path / "toy" / "dpo" / "validation" / "fold0-val4-seed1"
    assert init_run_folder(cfg) == tmp_path / "toy" / "sft" / "validation" / "fold0-val4"
    assert isinstance(init_run_folder(cfg), Path)
