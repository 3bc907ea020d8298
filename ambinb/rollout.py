"""Group rollouts: K trajectories per utterance, each read out at its own answer slot.

The shared path (:func:`generate_group`), per batch of B utterances:

1. audio: the tower output of each utterance comes from :class:`ambinb.audio.AudioFeatureCache`
   (the encoder runs at most once per utterance, never K times);
2. prefill: the B prompts, left-padded, go through the language model once
   (:func:`ambinb.lm.shared_prefill`); the KV cache, the attention mask and the last logits are then
   repeated K times (``Cache.batch_repeat_interleave``), so the prompt (audio positions included) is
   never recomputed per sample;
3. decoding: B*K rows step by step with :func:`ambinb.prompt.suppressed_ids` masked out of the
   logits (the three audio special tokens, and the head's rows past the tokenizer, which are no
   token), temperature / top-p sampling from one seeded ``torch.Generator`` (or greedy), until the
   answer close tag, ``<|im_end|>``/``<|endoftext|>`` or ``max_new_tokens``. The close tag is found
   on token ids (:mod:`ambinb.stopping`: one table lookup per row and step, on the device), the
   generated ids stay on the device, and each step makes one host sync (which rows finished). Two
   loops (``rollout_decode``): ``dynamic`` drops finished rows from the batch and the KV cache
   (``lean``: the same loop through :class:`ambinb.lm.LeanStep`, the language model's parts without
   transformers' wrappers, over a preallocated cache, where the model qualifies); ``static`` keeps
   every row in a preallocated ``StaticCache`` (finished rows are fed along, never sampled), which
   ``compiled`` runs through ``torch.compile`` (CUDA graphs on a GPU). All give the same tokens on the CPU (tests). LoRA
   adapters are merged into the weights while sampling (``rollout_merge_lora``;
   :func:`ambinb.merge.merged_lora` restores the exact base weights after). ``timings`` reports
   seconds per phase of the loop (:class:`PhaseClock`), for profiling;
4. readout (:func:`rollout`, :func:`read_trajectories`): p_hat for every trajectory at the slot
   right after the answer tag *the model generated*; a trajectory without one gets the tag appended
   to its text (``answer_prefix(think)``) and is read out there, with ``answer_found = False``.
   When every class name is one token and the model computes in float32, the decode loop keeps the
   class names' logits at every step, and a trajectory that went past its own tag is read from
   them (the softmax of the logits at the slot); only the rest need the batched read-out forward.

:func:`generate_naive` is the reference the benchmark compares against: ``model.generate`` called
K times per utterance on the processor's full inputs, so the encoder and the prefill run K times.

How much faster the shared path is than the naive one, on the CPU and on a GPU, is measured by
``bench/rollouts.py`` (results in ``bench/results/rollouts_*.json``; the book's Benchmarks page shows
them with the card and the date).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ambinb import audio as audio_mod
from ambinb import cot, lm, prompt, readout, stopping, vllm_rollout
from ambinb.merge import merged_lora
from ambinb.sampling import sample_next


@dataclass
class Trajectory:
    """One sampled completion and where it was read out."""

    utt_id: str
    token_ids: list[int]        # generated ids, stop token included
    text: str                   # the completion as text (special tokens dropped)
    readout_ids: list[int]      # completion ids up to and including the answer tag that p_hat follows
    answer_found: bool          # the model wrote the answer tag itself
    format_ok: bool             # PAPER.md's format check on ``text``
    stop: str                   # "answer_close", "eos" or "budget"

    @property
    def reasoning_len(self) -> int:
        """How many of ``token_ids`` come before the answer slot: through the model's own answer tag, or
        all of them when it wrote none (the read-out tag was appended). Example: ``<think>..</think>``
        ``<answer>`` ``anger`` ``</answer>`` as 40 + 3 + 1 + 3 ids -> 43."""
        return len(self.readout_ids) if self.answer_found else len(self.token_ids)


@dataclass
class GroupRollout:
    """K trajectories for each of B utterances and their read-out distributions."""

    trajectories: list[list[Trajectory]]          # [utterance][k]
    p_hat: torch.Tensor                           # (B, K, C) float32
    classes: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    def flat(self) -> list[Trajectory]:
        return [t for group in self.trajectories for t in group]


DECODES = ("dynamic", "lean", "static", "compiled")
STATIC_BUCKET = 256  # the static cache's length is rounded up to a multiple of this (prompt widths vary)


class PhaseClock:
    """Seconds per phase of a decode loop, for profiling: a no-op unless given a dict to fill.

    With a dict, every :meth:`lap` first waits for the device (so a GPU's seconds land in the phase
    that queued the work) and adds the time since the previous lap to ``out[phase]``. Example:
    ``timings = {}; generate_group(..., timings=timings)`` -> ``{"prefill": 0.2, "sample": 0.05, ...}``.
    """

    def __init__(self, out: dict[str, float] | None, device: Any):
        self.out = out
        self.cuda = out is not None and torch.device(device).type == "cuda"
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.out is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.out[phase] = self.out.get(phase, 0.0) + now - self.t
        self.t = now


@dataclass
class _Rows:
    """The decode loop's bookkeeping: generated ids on the device, per-row state, who is still going."""

    tokens: torch.Tensor            # (R, max_new) generated ids
    state: torch.Tensor             # (R,) close-tag automaton state
    active: torch.Tensor            # (A,) rows still decoding, on the device
    active_rows: list[int]          # the same on the host
    lengths: list[int]
    stop: list[str]
    score_ids: torch.Tensor | None = None  # (C,) ids whose raw logits are kept at every step
    scores: torch.Tensor | None = None     # (R, max_new, C) float32 those logits, per row and step

    def keep_scores(self, step: int, logits: torch.Tensor) -> None:
        """Keep the raw logits (A, V) of :attr:`score_ids` for the active rows at ``step`` (no host sync)."""
        if self.scores is not None:
            self.scores[self.active, step] = logits[:, self.score_ids].float()

    def record(self, step: int, nxt: torch.Tensor, automaton: stopping.TagAutomaton, eos: torch.Tensor) -> list[int]:
        """Store the step's ids (A,), advance the stop state, and return the rows that go on (one host sync)."""
        self.tokens[self.active, step] = nxt
        state = automaton.step(self.state[self.active], nxt)
        self.state[self.active] = state
        code = torch.where(torch.isin(nxt, eos), 1, torch.where(state >= automaton.length, 2, 0))
        keep = []
        for j, c in enumerate(code.tolist()):  # the one host sync of the step
            row = self.active_rows[j]
            self.lengths[row] = step + 1
            if c:
                self.stop[row] = ("eos", "answer_close")[c - 1]
            else:
                keep.append(j)
        return keep

    def results(self) -> list[tuple[list[int], str]]:
        ids = self.tokens.tolist()
        return [(ids[r][: self.lengths[r]], self.stop[r]) for r in range(len(ids))]


def _prefill(model: Any, encoded: list[prompt.Encoded], k: int, pad_id: int
             ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """The rollout's shared prefill: last logits, cache, mask and last positions, each repeated K times per
    utterance."""
    last, cache, mask, pos = lm.shared_prefill(model, [e.prompt_ids for e in encoded], [e.audio for e in encoded], k,
                                               pad_id)
    logits = lm.head_logits(model, last)
    return (logits.repeat_interleave(k, dim=0) if k > 1 else logits), cache, mask, pos[:, -1]


def _decode_dynamic(first: torch.Tensor, step_fn: lm.CacheStep, rows: _Rows, pick: Any, stop: Any,
                    clock: PhaseClock) -> None:
    """Rows leave the batch (and the KV cache) as they finish; ``step_fn`` is the forward
    (:class:`ambinb.lm.CacheStep`, or :class:`ambinb.lm.LeanStep` for ``lean``)."""
    logits, device = first, first.device
    for step in range(rows.tokens.shape[1]):
        nxt = pick(step, logits)
        clock.lap("sample")
        keep = stop(step, nxt)
        clock.lap("stop")
        if not keep or step == rows.tokens.shape[1] - 1:
            break
        if len(keep) < len(rows.active_rows):
            sel = torch.tensor(keep, device=device)
            step_fn.select(sel)
            rows.active, rows.active_rows = rows.active[sel], [rows.active_rows[j] for j in keep]
            nxt = nxt[sel]
        logits = step_fn(nxt)
        clock.lap("forward")


def static_cache(model: Any, dynamic: Any, max_len: int) -> Any:
    """A ``StaticCache`` of ``max_len`` positions holding what the prefill's dynamic cache holds."""
    from transformers import StaticCache  # heavy

    static = StaticCache(config=lm.base_model(model).config.get_text_config(decoder=True), max_cache_len=max_len)
    for src, dst in zip(dynamic.layers, static.layers):
        dst.lazy_initialization(src.keys, src.values)
        n = src.keys.shape[2]
        dst.keys[:, :, :n] = src.keys
        dst.values[:, :, :n] = src.values
        dst.cumulative_length.fill_(n)
    return static


def _decode_static(model: Any, first: torch.Tensor, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor,
                   rows: _Rows, pick: Any, stop: Any, clock: PhaseClock, step_fn: Any) -> None:
    """Every row stays in a preallocated cache; finished rows are fed along, their tokens never sampled.

    The cache (and the key mask) has the prompt width plus the budget rounded up to
    :data:`STATIC_BUCKET` positions, so that a compiled step sees few distinct shapes across batches.
    """
    logits, device = first, first.device
    max_new, width = rows.tokens.shape[1], mask.shape[1]
    length = -(-(width + max_new) // STATIC_BUCKET) * STATIC_BUCKET  # a few lengths: a few compilations
    cache = static_cache(model, cache, length)
    full = torch.cat([mask, torch.zeros((mask.shape[0], length - width), dtype=mask.dtype, device=device)], dim=1)
    feed = torch.zeros(mask.shape[0], dtype=torch.long, device=device)
    for step in range(max_new):
        nxt = pick(step, logits[rows.active])  # a copy: a CUDA graph's output buffer is rewritten by its next replay
        clock.lap("sample")
        keep = stop(step, nxt)
        clock.lap("stop")
        if not keep or step == max_new - 1:
            break
        if len(keep) < len(rows.active_rows):
            sel = torch.tensor(keep, device=device)
            rows.active, rows.active_rows, nxt = rows.active[sel], [rows.active_rows[j] for j in keep], nxt[sel]
        feed[rows.active] = nxt
        full[:, width + step] = 1
        last_pos = last_pos + 1
        logits = step_fn(model, feed[:, None], full, last_pos[:, None], cache)
        clock.lap("forward")


_COMPILED: dict[str, Any] = {}


def compiled_step() -> Any:
    """:func:`ambinb.lm.decode_step` through ``torch.compile`` (CUDA graphs on a GPU), compiled once per process."""
    if "step" not in _COMPILED:
        mode = "reduce-overhead" if torch.cuda.is_available() else "default"
        _COMPILED["step"] = torch.compile(lm.decode_step, mode=mode, dynamic=False)
    return _COMPILED["step"]


@torch.no_grad()
def generate_group(model: Any, tokenizer: Any, encoded: list[prompt.Encoded], k: int, max_new_tokens: int,
                   greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                   generator: torch.Generator | None = None, fmt: cot.OutputFormat = cot.AMBINB,
                   decode: str = "dynamic", timings: dict[str, float] | None = None,
                   score_ids: list[int] | None = None, scores: list[torch.Tensor] | None = None
                   ) -> list[list[tuple[list[int], str]]]:
    """Sample ``k`` completions per utterance with one shared prefill (see the module docstring).

    ``decode`` picks the loop (:data:`DECODES`); ``timings``, when given, receives seconds per phase
    (``prefill``, ``sample``, ``stop``, ``forward``), the device synchronised at each phase's end.
    With ``score_ids`` and a list ``scores``, the list receives one (max_new_tokens, len(score_ids))
    float32 CPU tensor per row (row ``b * k + j``): the raw logits of those ids at every step (row
    ``t`` predicts generated token ``t``; zeros after the row stopped), for :func:`read_trajectories`.

    Returns:
        ``[utterance][k] -> (generated ids, stop reason)``.
    """
    if decode not in DECODES:
        raise ValueError(f"rollout_decode={decode!r}: expected one of {DECODES}")
    device = lm.device_of(model)
    clock = PhaseClock(timings, device)
    logits, cache, mask, last_pos = _prefill(model, encoded, k, int(tokenizer.pad_token_id))
    clock.lap("prefill")
    n_rows = len(encoded) * k
    automaton = stopping.tag_automaton(tokenizer, fmt.answer_close).to(device, logits.shape[-1])
    eos = torch.tensor(prompt.eos_ids(tokenizer), device=device)
    suppress = torch.tensor(prompt.suppressed_ids(tokenizer, logits.shape[-1]), device=device)
    kept = score_ids is not None
    rows = _Rows(torch.zeros((n_rows, max_new_tokens), dtype=torch.long, device=device),
                 torch.zeros(n_rows, dtype=torch.long, device=device), torch.arange(n_rows, device=device),
                 list(range(n_rows)), [0] * n_rows, ["budget"] * n_rows,
                 torch.tensor(score_ids, device=device) if kept else None,
                 torch.zeros((n_rows, max_new_tokens, len(score_ids)), device=device) if kept else None)

    def pick(step: int, step_logits: torch.Tensor) -> torch.Tensor:
        rows.keep_scores(step, step_logits)
        step_logits[:, suppress] = float("-inf")
        return sample_next(step_logits, greedy, temperature, top_p, generator)

    def stop(step: int, nxt: torch.Tensor) -> list[int]:
        return rows.record(step, nxt, automaton, eos)

    if decode in ("dynamic", "lean"):
        lean = decode == "lean" and not lm.LeanStep.problems(lm.text_model(model).config)
        step_fn = (lm.LeanStep(model, cache, mask, last_pos, max_new_tokens) if lean
                   else lm.CacheStep(model, cache, mask, last_pos))
        _decode_dynamic(logits, step_fn, rows, pick, stop, clock)
    else:
        _decode_static(model, logits, cache, mask, last_pos, rows, pick, stop, clock,
                       compiled_step() if decode == "compiled" else lm.decode_step)
    if scores is not None and rows.scores is not None:
        scores.extend(rows.scores.cpu().unbind(0))
    out = rows.results()
    return [[out[b * k + j] for j in range(k)] for b in range(len(encoded))]


def find_answer_slot(tokenizer: Any, ids: list[int], tag: str) -> int | None:
    """The number of leading ``ids`` that decode to text ending exactly with the first ``tag``, or None.

    Binary search on the decoded prefix (monotone: once the tag appears it stays); None when the
    tag never appears, or when its last token also carries following text (no clean slot).
    """
    decode = lambda n: tokenizer.decode(ids[:n], skip_special_tokens=True)  # noqa: E731
    if tag not in decode(len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if tag in decode(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo if decode(lo).endswith(tag) else None


def make_trajectory(tokenizer: Any, utt_id: str, ids: list[int], stop: str, classes: list[str],
                    fmt: cot.OutputFormat = cot.AMBINB) -> Trajectory:
    """Decode one generation and place its readout slot (the model's own tag, or an appended one)."""
    body = ids[:-1] if stop == "eos" else ids
    text = tokenizer.decode(body, skip_special_tokens=True)
    slot = find_answer_slot(tokenizer, body, fmt.answer_open)
    if slot is not None:
        readout_ids = body[:slot]
    else:
        think = text.split(fmt.answer_open)[0].strip()
        readout_ids = prompt.segment_ids(tokenizer, cot.answer_prefix(think, fmt))
    return Trajectory(utt_id, list(ids), text, readout_ids, slot is not None, cot.format_ok(text, classes, fmt), stop)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode for the block; its training mode comes back after, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def rollout(model: Any, processor: Any, encoded: list[prompt.Encoded], classes: list[str], cfg: dict[str, Any],
            k: int | None = None, greedy: bool = False, generator: torch.Generator | None = None,
            timings: dict[str, float] | None = None) -> GroupRollout:
    """K trajectories per utterance and p_hat (B, K, C) over ``classes`` for each.

    Params used: ``rollout_k`` (when ``k`` is None), ``max_new_tokens``, ``temperature``, ``top_p``,
    ``prompt_preset``, ``readout_batch_size``, ``seed`` (when no ``generator`` is given),
    ``rollout_decode`` (:func:`generate_group`'s loop), ``rollout_merge_lora`` (LoRA merged into the
    weights while sampling: :func:`ambinb.merge.merged_lora`), and ``rollout_backend``: ``vllm``
    samples with vLLM (:mod:`ambinb.vllm_rollout`) unless ``greedy``; the trajectories and the
    readout are the same either way. ``timings`` receives the decode loop's phases (see
    :func:`generate_group`).
    """
    tok = processor.tokenizer
    fmt = cot.get_format(cfg["prompt_preset"])
    k = int(cfg["rollout_k"] if k is None else k)
    class_ids = prompt.class_ids(tok, classes, fmt)
    score_ids = [ids[0] for ids in class_ids] if slot_scores_exact(model, class_ids) else None
    scores: list[torch.Tensor] = []  # filled by the HF loop when score_ids is given
    if generator is None:
        generator = torch.Generator(device=lm.device_of(model))
        generator.manual_seed(int(cfg["seed"]))
    with eval_mode(model):
        t0 = time.perf_counter()
        if vllm_rollout.check_backend(str(cfg["rollout_backend"])) == "vllm" and not greedy:
            groups = vllm_rollout.generate_group(model, tok, encoded, k, cfg, fmt)  # greedy stays on the HF path
        else:
            with merged_lora(model, bool(cfg["rollout_merge_lora"])):
                groups = generate_group(model, tok, encoded, k, int(cfg["max_new_tokens"]), greedy,
                                        float(cfg["temperature"]), float(cfg["top_p"]), generator, fmt,
                                        str(cfg["rollout_decode"]), timings, score_ids, scores)
        t1 = time.perf_counter()
        trajectories = [[make_trajectory(tok, e.utt_id, ids, stop, classes, fmt) for ids, stop in group]
                        for e, group in zip(encoded, groups)]
        p = read_trajectories(model, encoded, trajectories, class_ids, int(tok.pad_token_id),
                              int(cfg["readout_batch_size"]), scores or None)  # none kept: all by the forward
        t2 = time.perf_counter()
    return GroupRollout(trajectories, p.view(len(encoded), k, len(classes)), list(classes),
                        {"generate": t1 - t0, "readout": t2 - t1})


def slot_scores_exact(model: Any, class_ids: list[list[int]]) -> bool:
    """Whether the decode loop's own logits give p_hat as the read-out forward does: every class name
    is one token (p_hat is then the softmax of their logits at the slot) and the model computes in
    float32 (PAPER.md: the read-out is float32; a bf16 model's decode logits are not)."""
    return all(len(ids) == 1 for ids in class_ids) and lm.base_model(model).dtype == torch.float32


@torch.no_grad()
def read_trajectories(model: Any, encoded: list[prompt.Encoded], trajectories: list[list[Trajectory]],
                      class_ids: list[list[int]], pad_id: int, batch_size: int = 0,
                      scores: list[torch.Tensor] | None = None) -> torch.Tensor:
    """p_hat (B * K, C) float32 on the CPU of every trajectory, at its read-out slot.

    A trajectory that wrote its own answer tag and went on for one more step was read out by the
    decode loop itself: row ``slot`` of its ``scores`` (:func:`generate_group`) holds the class names'
    logits there, so p_hat is their softmax, equal to the forward's up to rounding. The others (no
    ``scores``, the tag appended, the budget spent on the tag) go through one batched read-out forward
    of ``prompt + readout_ids`` (:func:`ambinb.readout.read_out`).
    """
    flat = [(e, t) for e, group in zip(encoded, trajectories) for t in group]
    if scores is not None and len(scores) != len(flat):
        raise ValueError(f"read_trajectories: {len(scores)} rows of scores for {len(flat)} trajectories")
    p = torch.empty((len(flat), len(class_ids)), dtype=torch.float32)
    todo = []
    for r, (_, t) in enumerate(flat):
        slot = len(t.readout_ids)
        if scores is not None and t.answer_found and slot < len(t.token_ids):
            p[r] = torch.softmax(scores[r][slot].float(), dim=-1)
        else:
            todo.append(r)
    if todo:
        prefixes = [flat[r][0].prompt_ids + flat[r][1].readout_ids for r in todo]
        p[todo] = readout.read_out(model, prefixes, [flat[r][0].audio for r in todo], class_ids, pad_id,
                                   batch_size).float().cpu()
    return p


@torch.no_grad()
def generate_naive(model: Any, processor: Any, texts: list[str], waves: list[Any], k: int, max_new_tokens: int,
                   greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0
                   ) -> list[list[list[int]]]:
    """The naive reference: ``model.generate`` K times per utterance on the processor's full inputs
    (the encoder and the prompt prefill run K times). Same suppression and stopping rules."""
    tok = processor.tokenizer
    device = lm.device_of(model)
    suppress = prompt.suppressed_ids(tok, lm.head(model).weight.shape[0])
    out = []
    for text, wave in zip(texts, waves):
        inputs = processor(text=[text], audio=[wave], sampling_rate=audio_mod.SAMPLE_RATE, return_tensors="pt")
        inputs = {key: v.to(device) for key, v in inputs.items()}
        group = []
        for j in range(k):
            torch.manual_seed(seed + j)
            gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                 temperature=temperature if not greedy else None, top_p=top_p if not greedy else None,
                                 top_k=None, suppress_tokens=suppress, eos_token_id=prompt.eos_ids(tok),
                                 pad_token_id=tok.pad_token_id, stop_strings=[cot.AMBINB.answer_close],
                                 tokenizer=tok)
            group.append(gen[0, inputs["input_ids"].shape[1]:].tolist())
        out.append(group)
    return out
