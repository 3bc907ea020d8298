"""Building the stand-in and finding it built: the build spec from the params, the build in memory,
its checkpoint folder (written atomically, with the spec it was built from), and the cache that
rebuilds only when the spec changes, under a lock so that parallel workers build it once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ambinb import files, lm, prompt
from ambinb.paths import resolve_path
from ambinb.standin.architecture import share_word_embeddings, tiny_config
from ambinb.standin.pretrain import warm_up
from ambinb.standin.recordings import ensure_recordings
from ambinb.standin.tokenizer import make_processor, tokenizer_corpus, train_tokenizer
from ambinb.standin.words import extra_corpus_words

log = logging.getLogger(__name__)

TINY_SPEC_FILE = "ambinb_tiny.json"
TINY_BUILDER_VERSION = 6  # bump whenever a change alters the built weights or tokenizer
# The build's arguments; each is the param ``tiny_<key>`` of params/defaults.yaml.
TINY_KEYS = ("seed", "vocab_size", "hidden_size", "layers", "heads", "kv_heads", "intermediate_size",
             "audio_hidden_size", "audio_layers", "audio_heads", "audio_ffn_size", "recordings", "warmup_steps",
             "warmup_batch_size", "warmup_lr", "tower_lr")


def tiny_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The build spec of the tiny stand-in from resolved params: the ``tiny_*`` keys of
    :data:`TINY_KEYS`, the builder version and a hash of the toy words its vocabulary covers."""
    spec = {k: cfg[f"tiny_{k}"] for k in TINY_KEYS}
    spec["builder_version"] = TINY_BUILDER_VERSION
    spec["corpus_words"] = hashlib.sha1(" ".join(extra_corpus_words()).encode()).hexdigest()[:12]
    return spec


def make_tiny(*, seed: int, vocab_size: int, hidden_size: int, layers: int, heads: int, kv_heads: int,
              intermediate_size: int, audio_hidden_size: int, audio_layers: int, audio_heads: int,
              audio_ffn_size: int, recordings: int, warmup_steps: int, warmup_batch_size: int, warmup_lr: float,
              tower_lr: float) -> tuple[Any, Any, dict[str, float]]:
    """Build the tiny stand-in in memory: tokenizer, processor, random model, its speech corpus of
    ``recordings`` clips (:func:`ambinb.standin.recordings.ensure_recordings`), warm-up.

    Runs on one torch thread, so that float sums are the same whatever the core count.

    Returns:
        ``(model, processor, warm-up stats)``; deterministic for a seed on a given machine.
    """
    from transformers import Qwen2AudioForConditionalGeneration  # heavy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = train_tokenizer(tokenizer_corpus(seed), vocab_size)
        processor = make_processor(tok)
        config = tiny_config(tok, hidden_size=hidden_size, layers=layers, heads=heads, kv_heads=kv_heads,
                             intermediate_size=intermediate_size, audio_hidden_size=audio_hidden_size,
                             audio_layers=audio_layers, audio_heads=audio_heads, audio_ffn_size=audio_ffn_size)
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).float()
        share_word_embeddings(model, tok)
        model.generation_config.eos_token_id = prompt.eos_ids(tok)
        model.generation_config.pad_token_id = tok.pad_token_id
        lm.core(model).audio_tower.requires_grad_(False)
        stats = {}
        if warmup_steps:
            rec = ensure_recordings(recordings, seed)
            stats = warm_up(model, processor, rec, steps=warmup_steps, batch_size=warmup_batch_size, lr=warmup_lr,
                            tower_lr=tower_lr, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return model, processor, stats


def build_tiny(out_dir: str | os.PathLike, **spec: Any) -> Path:
    """Build the tiny stand-in (:func:`make_tiny` with the :data:`TINY_KEYS` of ``spec``) and save it
    as a checkpoint folder.

    The folder is written under a temporary name and renamed (:func:`ambinb.files.atomic`, with
    :func:`install_build` for concurrent builders), so no builder leaves half a model and a full disk
    says so; it holds the model, the processor and ``ambinb_tiny.json`` (spec, warm-up stats).
    """
    out_dir = Path(out_dir)
    args = {k: v for k, v in spec.items() if k in TINY_KEYS}
    start = time.perf_counter()
    model, processor, stats = make_tiny(**args)
    with files.atomic(out_dir, install=lambda tmp, out: install_build(tmp, out, spec)) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info = {"spec": spec, "warmup": stats, "build_seconds": time.perf_counter() - start, "machine": machine()}
        (tmp / TINY_SPEC_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log.info("built the tiny stand-in in %s (%.1f s)", out_dir, time.perf_counter() - start)
    return out_dir


def install_build(tmp: Path, out_dir: Path, spec: dict[str, Any]) -> None:
    """Move a finished build into place; if a concurrent builder already put the same spec there, keep that."""
    try:
        os.replace(tmp, out_dir)  # atomic when out_dir is absent (or an empty folder)
        return
    except OSError:
        pass
    if built_spec(out_dir) == spec:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    stale = out_dir.with_name(f".{out_dir.name}.stale{os.getpid()}")
    os.replace(out_dir, stale)
    os.replace(tmp, out_dir)
    shutil.rmtree(stale, ignore_errors=True)


def machine() -> dict[str, str]:
    """What a build's float rounding depends on: the CPU (model and instruction-set flags) and torch.

    Two builds of one spec agree bit for bit where these agree (one torch thread either way). On
    another CPU the kernels round differently, and 1,200 warm-up steps carry that into every weight.
    """
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:12]
    return {"cpu": info.get("model name", platform.processor()), "cpu_flags": flags, "torch": torch.__version__}


def built_info(folder: Path) -> dict[str, Any]:
    """``folder``'s ``ambinb_tiny.json`` (spec, warm-up stats, build time, machine), or {} when unreadable."""
    try:
        return json.loads((folder / TINY_SPEC_FILE).read_text())
    except (OSError, ValueError):
        return {}


def built_spec(folder: Path) -> dict[str, Any] | None:
    """The spec recorded in ``folder``'s ``ambinb_tiny.json``, or None when there is none (or unreadable)."""
    return built_info(folder).get("spec")


def ensure_tiny(cfg: dict[str, Any]) -> Path:
    """The tiny stand-in's folder (``tiny_dir``), built first when missing or built from another spec.

    Several processes (sweep workers) may ask at once: one builds, under a lock file beside the
    folder, and the others wait for it and then find it built.
    """
    out = resolve_path(cfg["tiny_dir"])
    spec = tiny_spec(cfg)
    if built_spec(out) == spec:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        try:
            import fcntl  # posix

            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a build in progress
        except ImportError:  # pragma: no cover - no fcntl on Windows: no lock
            pass
        built = built_spec(out)
        if built == spec:
            return out
        if built is not None:
            log.warning("%s was built from another spec; rebuilding", out)
        return build_tiny(out, **spec)


