"""The language model's forward: where the audio enters it, its hidden states, its head, its batches.

Every forward ambinb runs (read-out, rollout prefill and decoding, the training losses of SFT, DPO
and GRPO) goes through this module, whatever wraps the model (peft, DDP's ``.module``):

* the parts, through the model's family (:mod:`ambinb.families`: Qwen2-Audio, Qwen2.5-Omni's
  Thinker): :func:`base_model` (the loaded ``...ForConditionalGeneration``), :func:`family`,
  :func:`core` (towers and language model), :func:`text_model` (the language model, no head),
  :func:`head`, :func:`audio_tower`, :func:`towers`, :func:`device_of`, :func:`audio_token_id`;
* :func:`merge_audio`, the **one place where audio enters the language model**: it embeds the
  token ids and writes the projected tower outputs (:mod:`ambinb.audio` computes and caches them;
  :func:`project_audio`) at the ``<|AUDIO|>`` positions, exactly as the model's own forward does with
  ``masked_scatter``, and refuses ids holding ``<|AUDIO|>`` without features (the silent failure of
  TRL's GRPOTrainer). Tests hook :func:`text_model` to check that every forward carries its audio;
* :func:`hidden_states` (the language model on merged embeddings, no head), :func:`head_logits`
  (the head where a caller needs logits), :func:`token_logprobs` (the log-probs of target tokens,
  the head applied ``chunk`` positions at a time when asked), :func:`decode_step` (one decoding
  forward of the rollout loop) and the loop's step objects over it: :class:`CacheStep` (transformers'
  cache) and :class:`LeanStep` (the same parts without transformers' wrappers, ``rollout_decode: lean``);
* batches: :func:`right_pad` (training and read-out forwards, no attention mask needed),
  :func:`left_pad` and :func:`shared_prefill` (B prompts run once for K rows to continue: the
  rollout's prefill, and GRPO's grouped log-probs); :func:`completion_states`, the hidden states that
  predict the tokens of completions after their prompts, flat or in groups that share a prompt.

Worked example of a shared prefill: prompts of 5 and 3 tokens, K = 2 -> ids (2, 5) left-padded,
positions ``[[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]``, one forward; the cache, the mask and the positions
then hold 4 rows (each prompt's twice).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ambinb import families, losses
from ambinb.families.base import Family

# --- the model's parts, whether or not peft or DDP wraps it ----------------------------------

def base_model(model: Any) -> Any:
    """The loaded model (``Qwen2AudioForConditionalGeneration``, ``Qwen2_5OmniThinkerForConditionalGeneration``)
    inside DDP (``.module``) and peft wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def family(model: Any) -> Family:
    """The family adapter of a possibly wrapped model, from its config's ``model_type``."""
    return families.of(base_model(model).config)


def core(model: Any) -> Any:
    """The inner model holding the towers and the language model (``Qwen2AudioModel``,
    ``Qwen2_5OmniThinkerModel``) of a possibly wrapped model."""
    return getattr(base_model(model), family(model).core)


def text_model(model: Any) -> Any:
    """The language model without its head: where the merged embeddings go in (and tests hook)."""
    return getattr(core(model), family(model).text_model)


def head(model: Any) -> Any:
    """The LM head (hidden -> vocabulary rows)."""
    return getattr(base_model(model), family(model).head)


def towers(model: Any) -> dict[str, Any]:
    """The frozen encoders by attribute name, the audio tower first (Qwen2.5-Omni: ``audio_tower``, ``visual``)."""
    inner = core(model)
    return {name: getattr(inner, name) for name in family(model).towers}


def audio_tower(model: Any) -> Any:
    """The audio tower (its outputs are cached by :class:`ambinb.audio.AudioFeatureCache`)."""
    return getattr(core(model), family(model).towers[0])


def device_of(model: Any) -> torch.device:
    """The device the language-model side of a possibly wrapped model runs on (its token embeddings')."""
    return base_model(model).get_input_embeddings().weight.device


def audio_token_id(model: Any) -> int:
    """The id of ``<|AUDIO|>`` in the model's config."""
    return int(getattr(base_model(model).config, family(model).audio_token))


def project_audio(model: Any, audio: list[torch.Tensor]) -> torch.Tensor:
    """Tower outputs (n_i, d_audio), concatenated and mapped to the language model's width: through the
    family's projector (Qwen2-Audio's ``multi_modal_projector``), or as they are where the tower ends in
    its own projection (Qwen2.5-Omni). Example: outputs of 50 and 25 rows -> (75, hidden)."""
    name = family(model).projector
    if not name:
        embed = base_model(model).get_input_embeddings().weight
        return torch.cat([f.to(embed.device, embed.dtype) for f in audio], dim=0)
    proj = getattr(core(model), name)
    weight = next(proj.parameters())
    return proj(torch.cat([f.to(weight.device, weight.dtype) for f in audio], dim=0))


# --- the one place where audio enters the language model -------------------------------------

def merge_audio(model: Any, input_ids: torch.Tensor, audio: list[torch.Tensor] | None) -> torch.Tensor:
    """Token embeddings with the projected tower outputs written at the ``<|AUDIO|>`` positions.

    Args:
        input_ids: (B, T); the rows that hold ``<|AUDIO|>`` ids hold exactly as many as their
            utterance has audio tokens (the processor's expansion).
        audio: one tower output (n_i, d_audio) per row that holds audio tokens, in row order
            (rows of one utterance may share a tensor); None when no row holds any.

    Returns:
        ``inputs_embeds`` (B, T, hidden) in the language model's dtype.

    Raises:
        ValueError: audio tokens without features, or counts that do not match, naming the row.
    """
    embeds = base_model(model).get_input_embeddings()(input_ids)
    is_audio = input_ids == audio_token_id(model)
    per_row = is_audio.sum(-1).tolist()
    rows_with_audio = [i for i, n in enumerate(per_row) if n]
    if not rows_with_audio:
        return embeds
    if audio is None:
        raise ValueError(f"rows {rows_with_audio} hold <|AUDIO|> tokens but no audio features were given: "
                         "the language model would read the placeholder embedding instead of the audio")
    if len(audio) != len(rows_with_audio):
        raise ValueError(f"{len(rows_with_audio)} rows hold audio tokens but {len(audio)} feature tensors were given")
    for row, feats in zip(rows_with_audio, audio):
        if feats.shape[0] != per_row[row]:
            raise ValueError(f"row {row}: {per_row[row]} <|AUDIO|> tokens but {feats.shape[0]} audio features")
    projected = project_audio(model, audio).to(embeds.device, embeds.dtype)
    return embeds.masked_scatter(is_audio.unsqueeze(-1).to(embeds.device), projected)


# --- forwards -------------------------------------------------------------------------------

def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  audio: list[torch.Tensor] | None = None, position_ids: torch.Tensor | None = None,
                  cache: Any = None, use_cache: bool = False) -> tuple[torch.Tensor, Any]:
    """The language model's last hidden states (B, T, hidden) and its cache, on ids whose audio
    positions carry ``audio`` (:func:`merge_audio`); no head.

    Callers apply :func:`head_logits` only where they need logits: a vocabulary of 150k makes full
    (B, T, V) logits the largest tensor of a real-size forward. It calls the language model itself
    (:func:`text_model`), past any DDP wrapper (the engine averages gradients itself, so no DDP hook is
    needed) and past the multimodal wrapper, whose own forward would merge audio a second way (and, for
    Qwen2.5-Omni, rebuild its 3-D positions from the ids; with audio and text only they equal these 1-D
    ones, which its language model expands to three).
    """
    kwargs: dict[str, Any] = {"inputs_embeds": merge_audio(model, input_ids, audio), "attention_mask": attention_mask,
                              "use_cache": use_cache}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if cache is not None:
        kwargs["cache"] = cache
    out = text_model(model)(**kwargs)
    return out.last_hidden_state, out.cache


def head_logits(model: Any, hidden: torch.Tensor, float32: bool = False) -> torch.Tensor:
    """The LM head on hidden states (..., hidden) -> (..., V); in float32 when asked (the read-out, log-probs)."""
    head_ = head(model)
    if float32:
        bias = head_.bias.float() if head_.bias is not None else None
        return torch.nn.functional.linear(hidden.float(), head_.weight.float(), bias)
    return head_(hidden)


def _chunk_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return losses.token_logprobs(head_logits(model, hidden, float32=True)[None], targets[None])[0]


def token_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """``log softmax(head(hidden))[target]`` per position, in float32: the one per-token log-prob path
    (SFT's CE, DPO's sequence log-probs, GRPO's ratios).

    With ``chunk`` > 0 the head runs ``chunk`` positions at a time: each chunk's float32 logits are
    reduced to one log-prob per position and dropped, and under autograd each chunk runs in
    ``torch.utils.checkpoint``, so the backward pass recomputes one chunk's logits at a time too. Peak
    memory for the logits falls from ``positions x V`` to ``chunk x V`` floats, for a second head matmul
    per chunk in the backward pass. Example: 1,600 positions over Qwen2-Audio's 156,032 rows, chunk 256:
    1.0 GB of float32 logits at once -> 0.16 GB.

    Args:
        hidden: (P, H) last hidden states of the positions that predict ``targets``.
        targets: (P,) token ids (``-100``: no target, log-prob 0).
        chunk: positions per head application; 0 = all at once.

    Returns:
        (P,) float32, differentiable with respect to ``hidden`` (and the head when it trains); chunked,
        equal to the plain path's values up to the float rounding of the per-chunk matmul.
    """
    if chunk <= 0 or hidden.shape[0] <= chunk:
        return _chunk_logprobs(model, hidden, targets)
    head_trains = any(p.requires_grad for p in head(model).parameters())
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or head_trains):
            parts.append(checkpoint(_chunk_logprobs, model, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(model, h, t))
    return torch.cat(parts)


def decode_step(model: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
    """One decoding forward (R, 1) -> next-token logits (R, V).

    Sampled ids never hold ``<|AUDIO|>`` (the rollout masks it out of the logits), so the embeddings are
    the token embeddings as :func:`merge_audio` would return them, without its per-row count (a host
    sync). Under SDPA attention the key mask goes in as the 4D boolean mask transformers would build
    from ``mask`` (R, keys), for one query per row; built there, its check for "no padding at all"
    would read a value back to the host at every step.
    """
    embeds = base_model(model).get_input_embeddings()(ids)
    if base_model(model).config._attn_implementation == "sdpa":
        mask = mask[:, None, None, :].bool()
    out = text_model(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    return head_logits(model, out.last_hidden_state[:, -1])


class CacheStep:
    """The decode loop's forward over a transformers KV cache: :func:`decode_step` one token per row at
    a time, its key mask and positions kept here; :meth:`select` drops finished rows (the cache too).

    ``mask`` (R, keys) is the prefill's key mask, ``last_pos`` (R,) each row's last position."""

    def __init__(self, model: Any, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor) -> None:
        self.model, self.cache, self.mask, self.pos = model, cache, mask, last_pos

    def select(self, sel: torch.Tensor) -> None:
        """Keep rows ``sel`` (indices into the current rows), in that order."""
        self.cache.batch_select_indices(sel)
        self.mask, self.pos = self.mask[sel], self.pos[sel]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (A,) at each row's next position -> next-token logits (A, V)."""
        self.mask = torch.cat([self.mask, torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype,
                                                     device=self.mask.device)], dim=1)
        self.pos = self.pos + 1
        return decode_step(self.model, ids[:, None], self.mask, self.pos[:, None], self.cache)


class LeanStep(CacheStep):
    """:class:`CacheStep` without transformers' model and layer wrappers (``rollout_decode: lean``).

    One decoding token per row costs a small model more in per-call overhead (output capturing,
    mask preparation, a cache that grows by concatenation) than in arithmetic. This step calls the
    language model's own parts in the order its decoder layers do (embedding, rotary table, per layer:
    input norm, q/k/v projections, ``apply_rotary_pos_emb``, the SDPA attention function, output
    projection, residual, post-attention norm, MLP, residual; the final norm and the head) over keys
    and values preallocated for ``room`` more tokens and written in place. The projections are the
    modules themselves, so LoRA layers apply as they would. Only Qwen2-type language models with SDPA
    and the default rotary embedding qualify (:meth:`problems`; ``rollout_decode: lean`` decodes any
    other model with :class:`CacheStep`). Tests check its logits against :class:`CacheStep`'s, bit for
    bit on the CPU. Its speed against :class:`CacheStep` on the stand-in: ``bench/rollouts.py``."""

    def __init__(self, model: Any, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor, room: int) -> None:
        super().__init__(model, None, mask, last_pos)
        self.lm = text_model(model)
        self.check(self.lm.config)
        rows, width = mask.shape
        self.keys, self.values = [], []
        for layer in cache.layers:
            k = layer.keys.new_zeros((*layer.keys.shape[:2], width + room, layer.keys.shape[3]))
            v = k.clone()
            k[:, :, :width], v[:, :, :width] = layer.keys, layer.values
            self.keys.append(k)
            self.values.append(v)
        self.keymask = torch.zeros((rows, 1, 1, width + room), dtype=torch.bool, device=mask.device)
        self.keymask[:, 0, 0, :width] = mask.bool()
        self.t = width

    @staticmethod
    def problems(config: Any) -> list[str]:
        """What keeps this step from reproducing a language model of ``config``; empty when it qualifies."""
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        found = [f"model_type {config.model_type!r} (qwen2 only)" if config.model_type != "qwen2" else "",
                 f"attn_implementation {config._attn_implementation!r} (sdpa only)"
                 if config._attn_implementation != "sdpa" else "",
                 "a sliding window" if getattr(config, "use_sliding_window", False) else "",
                 f"rope_type {rope.get('rope_type')!r}" if rope.get("rope_type", "default") != "default" else ""]
        return [p for p in found if p]

    @classmethod
    def check(cls, config: Any) -> None:
        """Raise ValueError unless the language model qualifies (:meth:`problems`, named in the message)."""
        if cls.problems(config):
            raise ValueError("LeanStep reproduces Qwen2 language models with SDPA and the default rotary "
                             f"embedding; this one has {', '.join(cls.problems(config))}")

    def select(self, sel: torch.Tensor) -> None:
        self.keys = [k[sel] for k in self.keys]
        self.values = [v[sel] for v in self.values]
        self.keymask, self.pos = self.keymask[sel], self.pos[sel]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # heavy
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        if self.t == self.keys[0].shape[2]:
            raise RuntimeError(f"LeanStep: no room left after {self.t} positions")
        self.keymask[:, 0, 0, self.t] = True
        self.pos = self.pos + 1
        hidden = base_model(self.model).get_input_embeddings()(ids[:, None])
        cos, sin = self.lm.rotary_emb(hidden, self.pos[:, None])
        attend = ALL_ATTENTION_FUNCTIONS["sdpa"]
        mask, end = self.keymask[..., : self.t + 1], self.t + 1
        for layer, keys, values in zip(self.lm.layers, self.keys, self.values):
            attn, residual = layer.self_attn, hidden
            hidden = layer.input_layernorm(hidden)
            shape = (hidden.shape[0], 1, -1, attn.head_dim)
            q, k, v = (proj(hidden).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[:, :, self.t: end], values[:, :, self.t: end] = k, v
            out, _ = attend(attn, q, keys[:, :, :end], values[:, :, :end], mask, dropout=0.0, scaling=attn.scaling)
            hidden = residual + attn.o_proj(out.reshape(hidden.shape[0], 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.t = end
        return head_logits(self.model, self.lm.norm(hidden)[:, -1])


# --- batches --------------------------------------------------------------------------------

def right_pad(rows: list[list[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (N, T) right-padded with ``pad_id`` and the attention mask (N, T).

    A right-padded batch needs no attention mask in a causal forward: every real token comes before
    its row's padding, so the causal mask alone keeps it from attending there, and positions count
    from 0 either way. Training and read-out forwards therefore pass ``attention_mask=None``, which
    lets SDPA run its causal kernel instead of materialising a (N, 1, T, T) mask (flash attention on a
    GPU). Only the padding's own hidden states differ, and nothing reads them (``tests/test_readout.py``).

    Example: rows ``[[5, 6, 7], [8]]``, pad 0 -> ids ``[[5, 6, 7], [8, 0, 0]]``, mask ``[[1, 1, 1], [1, 0, 0]]``.
    """
    return _pad(rows, pad_id, device, left=False)


def left_pad(rows: list[list[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (N, T) left-padded with ``pad_id`` and the attention mask (N, T): rows that a KV cache
    continues (a shared prefill) end at the same column. Positions must then count from each row's
    first real token (``mask.cumsum(-1) - 1``).

    Example: rows ``[[5, 6, 7], [8]]``, pad 0 -> ids ``[[5, 6, 7], [0, 0, 8]]``, mask ``[[1, 1, 1], [0, 0, 1]]``.
    """
    return _pad(rows, pad_id, device, left=True)


def _pad(rows: list[list[int]], pad_id: int, device: Any, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def shared_prefill(model: Any, prompts: list[list[int]], audio: list[torch.Tensor], k: int, pad_id: int
                   ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """The B prompts (with their audio) through the language model once, left-padded, for K rows each
    to continue: ``(last hidden states (B, H), KV cache, mask (B*K, T), positions (B*K, T))``, the
    cache, the mask and the positions repeated K times per prompt (``Cache.batch_repeat_interleave``).
    Gradients flow through the cache when they are on (GRPO's grouped log-probs)."""
    device = device_of(model)
    ids, mask = left_pad(prompts, pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden, cache = hidden_states(model, ids, mask, audio, pos, use_cache=True)
    if k > 1:
        cache.batch_repeat_interleave(k)
        mask = mask.repeat_interleave(k, dim=0)
        pos = pos.repeat_interleave(k, dim=0)
    return hidden[:, -1], cache, mask, pos


def completion_states(model: Any, prompts: list[list[int]], completions: list[list[int]], audio: list[torch.Tensor],
                      pad_id: int, rows: list[int], cols: list[int], group_size: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The hidden states (P, H) whose j-th predicts ``completions[rows[j]][cols[j]]`` given its prompt (with
    audio) and the completion tokens before it, and the whole rows' hidden states (N, T, H) or None.

    With ``group_size`` 1: one right-padded forward of ``prompt_i + completion_i`` (the whole rows come
    back, for a read-out at a slot). With ``group_size`` G > 1 the rows come in groups of G that share one
    prompt and its audio: the B prompts run once, left-padded (:func:`shared_prefill`), their KV cache is
    repeated G times (gradients flow back through it to the one prompt forward), and only the
    completions run per row; there are no whole rows then (None). Under activation checkpointing a layer
    is re-run in the backward pass and would write the cache twice, so the grouped forward falls back to
    the flat one there. Example: prompts ``[p, p]``, completions ``[[7, 8], [9]]``, G = 2 -> ``p`` runs
    once; row 0 continues with 7, 8 and row 1 with 9; ``rows [0, 0, 1], cols [0, 1, 0]`` -> 3 states.
    """
    device = device_of(model)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    if group_size > 1 and not base_model(model).is_activation_checkpointing:
        last, cache, mask, pos = shared_prefill(model, prompts[::group_size], audio[::group_size], group_size, pad_id)
        tail, tail_mask = right_pad(completions, pad_id, device)
        tail_pos = pos[:, -1:] + 1 + torch.arange(tail.shape[1], device=device)
        tail_hidden, _ = hidden_states(model, tail, torch.cat([mask, tail_mask], dim=1), None, tail_pos, cache,
                                       use_cache=True)
        states = torch.cat([last.repeat_interleave(group_size, dim=0)[:, None], tail_hidden[:, :-1]], dim=1)
        return states[rows_t, cols_t], None
    ids, _ = right_pad([p + c for p, c in zip(prompts, completions)], pad_id, device)
    hidden, _ = hidden_states(model, ids, None, audio)  # causal alone: see right_pad
    pos = [len(prompts[i]) - 1 + t for i, t in zip(rows, cols)]  # position t-1 predicts token t
    return hidden[rows_t, torch.tensor(pos, device=device)], hidden
