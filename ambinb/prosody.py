"""Measured prosody: openSMILE eGeMAPS functionals per utterance, relative to a reference voice.

Three layers, each a small function:

1. :func:`egemaps` measures the 88 eGeMAPS v02 functionals of each wav with the ``opensmile``
   package (offline) and caches them on disk, one row per file keyed by its absolute path, size
   and modification time, so a rerun reads the table instead of measuring again and an edited or
   regenerated wav is measured afresh.
2. :func:`speaker_zscores` turns every column into a z-score within a group of utterances (mean and
   standard deviation over the group's rows; labels are never used). The group is the
   ``prosody_reference`` (:data:`REFERENCES`, :func:`reference_groups`):

   * ``corpus`` (the default): every utterance of the dataset that has audio, one group. A listener
     who hears one clip can judge it against voices in general, so a model can hear these words.
   * ``speaker``: the same speaker's other utterances. More precise about the speaker's state, but
     one clip does not carry the speaker's usual voice, so a model cannot hear these words.
3. :func:`dimensions` folds the z-scores into six readable dimensions, and :func:`describe` words
   them relative to the reference::

       loudness   loudness, equivalent sound level                  louder / softer
       rate       loudness peaks and voiced segments per second,
                  minus mean voiced-segment length                  faster / slower
       pitch      mean F0 (semitones)                               higher / lower pitch
       pitch_var  F0 variation and 20-80 percentile range           more varied / flatter pitch
       tension    alpha ratio, HNR, minus Hammarberg index and
                  H1-H2 (a steep spectral slope, noise and a strong
                  fundamental mean breathiness)                     tenser / breathier voice
       roughness  jitter and shimmer                                rougher / steadier voice

   Each dimension is the mean of its signed z-scores, z-scored again within the same groups so
   that one scale of words fits all six: ``|z| < 0.5`` is "close to", ``0.5 <= |z| < 1.25`` is
   "somewhat", and larger is "much" (e.g. ``z = +1.4`` on loudness -> "much louder than a typical
   voice" against the corpus, "much louder than the speaker's usual" against the speaker).

:func:`prosody_table` runs the three on a dataset table. Utterances without audio (``audio_path``
is "") get NaN numbers and the words "not measured".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile

from ambinb.paths import resolve_path
from ambinb.results import write_atomic

log = logging.getLogger(__name__)

CACHE_FILE = "egemaps_v02.csv"
KEY_COLUMNS = ("audio_path", "size", "mtime_ns")
NEAR, MUCH = 0.5, 1.25

# dimension -> ((eGeMAPS column, sign), ...); see the module docstring.
DIMENSIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "loudness": (("loudness_sma3_amean", 1.0), ("equivalentSoundLevel_dBp", 1.0)),
    "rate": (("loudnessPeaksPerSec", 1.0), ("VoicedSegmentsPerSec", 1.0), ("MeanVoicedSegmentLengthSec", -1.0)),
    "pitch": (("F0semitoneFrom27.5Hz_sma3nz_amean", 1.0),),
    "pitch_var": (("F0semitoneFrom27.5Hz_sma3nz_stddevNorm", 1.0), ("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", 1.0)),
    "tension": (("alphaRatioV_sma3nz_amean", 1.0), ("HNRdBACF_sma3nz_amean", 1.0),
                ("hammarbergIndexV_sma3nz_amean", -1.0), ("logRelF0-H1-H2_sma3nz_amean", -1.0)),
    "roughness": (("jitterLocal_sma3nz_amean", 1.0), ("shimmerLocaldB_sma3nz_amean", 1.0)),
}
# dimension -> (word for z > 0, word for z < 0, noun for "close to a typical ...")
WORDS: dict[str, tuple[str, str, str]] = {
    "loudness": ("louder", "softer", "loudness"),
    "rate": ("faster", "slower", "speaking rate"),
    "pitch": ("higher-pitched", "lower-pitched", "pitch level"),
    "pitch_var": ("more varied in pitch", "flatter in pitch", "pitch variation"),
    "tension": ("tenser", "breathier", "voice quality"),
    "roughness": ("rougher", "steadier", "voice steadiness"),
}
# prosody_reference -> (what "louder than ..." compares with, what "close to ... <noun>" says,
# the reference in a sentence of its own)
REFERENCES: dict[str, tuple[str, str, str]] = {
    "corpus": ("a typical voice", "a typical", "a typical voice of the corpus"),
    "speaker": ("the speaker's usual", "the speaker's usual", "this speaker's usual voice"),
}


@lru_cache(maxsize=1)
def _smile() -> Any:
    import opensmile  # heavy

    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=opensmile.FeatureLevel.Functionals)


def feature_names() -> list[str]:
    """The 88 eGeMAPS v02 functional names, in openSMILE's order."""
    return list(_smile().feature_names)


def file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """The cache key of a wav: (absolute path, size in bytes, modification time in ns).

    Raises:
        FileNotFoundError: naming the path.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"audio file not found: {p}") from err
    return str(p), int(st.st_size), int(st.st_mtime_ns)


def measure(path: str | os.PathLike) -> np.ndarray:
    """The 88 eGeMAPS functionals of one wav, float64 (no cache).

    Raises:
        ValueError: naming the file when it cannot be read, is empty, holds NaN or inf samples, or
            openSMILE cannot process it.
    """
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for unreadable audio
        raise ValueError(f"{path}: not a readable audio file: {err}") from err
    if len(samples) == 0:
        raise ValueError(f"{path}: the audio file is empty")
    bad = int((~np.isfinite(samples)).sum())
    if bad:  # openSMILE would turn them into NaN functionals, silently
        raise ValueError(f"{path}: {bad} samples are NaN or inf; fix or replace the file")
    # process_signal on samples read here is about twice as fast as process_file
    return measure_samples(samples.mean(axis=1), rate, str(path))


def measure_samples(samples: np.ndarray, rate: int, source: str) -> np.ndarray:
    """The 88 eGeMAPS functionals of mono float samples, float64; ``source`` names them in errors."""
    try:
        frame = _smile().process_signal(samples, rate)
    except Exception as err:
        raise ValueError(f"{source}: openSMILE could not measure this file: {err}") from err
    return frame.to_numpy(dtype=np.float64)[0]


def _measure_many(paths: list[str], workers: int) -> np.ndarray:
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return np.stack(list(pool.map(measure, paths, chunksize=16)))
    return np.stack([measure(p) for p in paths])


def _cache_path(cache_dir: str | os.PathLike) -> Path:
    return resolve_path(cache_dir) / CACHE_FILE


def read_cache(cache_dir: str | os.PathLike) -> pd.DataFrame:
    """The cached table (columns :data:`KEY_COLUMNS` + features); empty when there is none."""
    path = _cache_path(cache_dir)
    if not path.exists():
        return pd.DataFrame(columns=[*KEY_COLUMNS, *feature_names()])
    table = pd.read_csv(path)  # pandas parses floats to the exact double written
    missing = [c for c in (*KEY_COLUMNS, *feature_names()) if c not in table.columns]
    if missing:
        log.warning("%s lacks columns %s; ignoring the cache", path, missing[:3])
        return pd.DataFrame(columns=[*KEY_COLUMNS, *feature_names()])
    return table


def egemaps(paths: Iterable[str | os.PathLike], cache_dir: str | os.PathLike = ".cache/prosody",
            workers: int = 1, progress: bool = False) -> pd.DataFrame:
    """eGeMAPS functionals for each wav, measured once and cached.

    Args:
        paths: wav files (duplicates allowed).
        cache_dir: folder of the cache table (relative paths are against the project root).
        workers: processes for the files not yet cached (1 = in this process).
        progress: log how many files are measured.

    Returns:
        A DataFrame indexed by absolute path (in the order given, duplicates kept) with the 88
        feature columns.
    """
    wanted = [str(Path(p).resolve()) for p in paths]
    keys = {p: file_key(p) for p in dict.fromkeys(wanted)}
    cache = read_cache(cache_dir)
    cache_keys = set(zip(cache["audio_path"].astype(str), cache["size"].astype("int64"),
                         cache["mtime_ns"].astype("int64"), strict=True)) if len(cache) else set()
    todo = [p for p, k in keys.items() if k not in cache_keys]
    if todo:
        if progress:
            log.info("measuring eGeMAPS for %d files (%d cached)", len(todo), len(keys) - len(todo))
        values = _measure_many(todo, workers)
        new = pd.DataFrame(values, columns=feature_names())
        new.insert(0, "mtime_ns", [keys[p][2] for p in todo])
        new.insert(0, "size", [keys[p][1] for p in todo])
        new.insert(0, "audio_path", todo)
        stale = cache["audio_path"].isin(todo) if len(cache) else None
        cache = pd.concat([cache[~stale] if stale is not None else cache, new], ignore_index=True)
        _write_cache(cache, cache_dir)
    table = cache.drop_duplicates("audio_path", keep="last").set_index("audio_path")
    values = table.loc[wanted, feature_names()].to_numpy(dtype=np.float64)
    return pd.DataFrame(values, index=pd.Index(wanted, dtype=object, name="audio_path"), columns=feature_names())


def _write_cache(cache: pd.DataFrame, cache_dir: str | os.PathLike) -> None:
    write_atomic(_cache_path(cache_dir), cache.to_csv(index=False))


def speaker_zscores(features: pd.DataFrame, speakers: Iterable[str]) -> pd.DataFrame:
    """Z-score every column within each group: (x - group mean) / group std (ddof 0).

    The groups are speakers for the ``speaker`` reference, one group for the ``corpus``
    (:func:`reference_groups`). A column that is constant in a group (or a group of one utterance)
    gives 0; NaN rows (no audio) stay NaN and do not enter the group's statistics.

    Example: one speaker, column values [1, 2, 3] -> mean 2, std 0.8165 -> [-1.2247, 0, 1.2247].
    """
    speakers = pd.Series(list(speakers), index=features.index)
    if len(speakers) != len(features):
        raise ValueError(f"{len(speakers)} speakers for {len(features)} feature rows")
    grouped = features.groupby(speakers.to_numpy())
    mean = grouped.transform("mean")
    std = grouped.transform("std", ddof=0)
    z = (features - mean) / std.where(std > 1e-12)
    return z.where(features.isna(), z.fillna(0.0))


def reference_groups(df: pd.DataFrame, reference: str) -> list[str]:
    """The group each row of a dataset table is z-scored in: its ``speaker``, or one ``corpus`` group.

    Example: speakers ``[a, a, b]`` -> ``speaker``: ``["a", "a", "b"]``; ``corpus``: ``["corpus"] * 3``.
    """
    if reference == "speaker":
        return list(df["speaker"].astype(str))
    if reference == "corpus":
        return ["corpus"] * len(df)
    raise ValueError(f"prosody_reference={reference!r}: choose one of {list(REFERENCES)}")


def dimensions(z: pd.DataFrame, speakers: Iterable[str]) -> pd.DataFrame:
    """The six readable dimensions of :data:`DIMENSIONS` from z-scores, re-z-scored in the same groups."""
    composite = pd.DataFrame(
        {dim: sum(sign * z[col] for col, sign in cols) / len(cols) for dim, cols in DIMENSIONS.items()},
        index=z.index)
    return speaker_zscores(composite, speakers)


def describe(dim: str, z: float, reference: str = "corpus") -> str:
    """Words for one dimension's z-score relative to the ``reference`` (:data:`REFERENCES`).

    Examples (corpus): ``describe("loudness", 1.4)`` -> ``"much louder than a typical voice"``;
    ``describe("rate", -0.7)`` -> ``"somewhat slower than a typical voice"``;
    ``describe("pitch", 0.1)`` -> ``"close to a typical pitch level"``; with ``reference="speaker"``
    the first is ``"much louder than the speaker's usual"``.
    """
    up, down, noun = WORDS[dim]
    than, near, _ = REFERENCES[reference]
    if z is None or not np.isfinite(z):
        return "not measured"
    if abs(z) < NEAR:
        return f"close to {near} {noun}"
    size = "much" if abs(z) >= MUCH else "somewhat"
    return f"{size} {up if z > 0 else down} than {than}"


def bins(z: Any) -> np.ndarray:
    """The three-way bin of z-scores that :func:`describe` words: 0 when ``|z| < NEAR`` ("close to"),
    else the sign (NaN stays NaN).

    Example: ``[1.4, -0.7, 0.1, 0.5]`` -> ``[1, -1, 0, 1]``.
    """
    z = np.asarray(z, dtype=np.float64)
    return np.where(np.isnan(z), np.nan, np.where(np.abs(z) < NEAR, 0.0, np.sign(z)))


def prosody_table(df: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """Measured prosody of every utterance of a dataset table, indexed by ``utt_id``.

    Columns: the six dimensions' z-scores (``loudness``, ``rate``, ...), then their words
    (``loudness_words``, ...). Uses ``cfg["prosody_cache"]``, ``cfg["prosody_workers"]`` and
    ``cfg["prosody_reference"]``: the reference is every row of ``df`` that has audio (``corpus``)
    or every row of the same speaker that has audio (``speaker``), never a label. Pass the whole
    dataset and select rows afterwards: the corpus reference depends on which rows are given.
    """
    reference = cfg["prosody_reference"]
    groups = reference_groups(df, reference)
    dims = dimensions(speaker_zscores(utterance_features(df, cfg), groups), groups)
    for dim in DIMENSIONS:
        dims[f"{dim}_words"] = [describe(dim, v, reference) for v in dims[dim]]
    return dims


def utterance_features(df: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """Raw eGeMAPS functionals per utterance (index ``utt_id``; NaN rows where there is no audio)."""
    has_audio = df["audio_path"].fillna("").astype(str) != ""
    out = pd.DataFrame(np.nan, index=pd.Index(df["utt_id"].astype(str), name="utt_id"), columns=feature_names())
    if has_audio.any():
        measured = egemaps(df.loc[has_audio, "audio_path"], cfg["prosody_cache"],
                           workers=int(cfg["prosody_workers"]), progress=True)
        out.loc[df.loc[has_audio, "utt_id"].astype(str).to_numpy()] = measured.to_numpy()
    return out


def speaker_normalised(df: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """All 88 eGeMAPS functionals as per-speaker z-scores, indexed by ``utt_id`` (NaN without audio)."""
    return speaker_zscores(utterance_features(df, cfg), df["speaker"].astype(str))


def by_class_figure(table: pd.DataFrame, label: pd.Series, reference: str = "corpus") -> Any:
    """One box plot per prosody dimension: the z-scores grouped by ``label`` (e.g. consensus).

    ``table`` is :func:`prosody_table`'s output; ``label`` is indexed by ``utt_id``; ``reference``
    is the ``prosody_reference`` the table was made with (it names the y axis).
    """
    import matplotlib.pyplot as plt  # heavy

    dims = list(DIMENSIONS)
    joined = table[dims].join(label.rename("label"), how="inner").dropna()
    order = sorted(joined["label"].unique())
    fig, axes = plt.subplots(1, len(dims), figsize=(2.3 * len(dims), 3.2), sharey=True)
    for ax, dim in zip(axes, dims, strict=True):
        ax.boxplot([joined.loc[joined["label"] == c, dim] for c in order], showfliers=False)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=45, ha="right")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        up, down, _ = WORDS[dim]
        ax.set_title(f"{dim}\n(+ {up.split(' than')[0]})", fontsize=9)
    axes[0].set_ylabel("z over the corpus" if reference == "corpus" else "z within speaker")
    fig.tight_layout()
    return fig
