"""The group-rollout decode loop as it was before stop detection moved to token ids (the reference
of the equivalence tests in ``test_rollout.py``): per step, every row's new id goes to the host and
the close tag is searched in the decoded text of the row's last few tokens."""

from __future__ import annotations

import torch

from ambinb import cot, lm, prompt, sampling


@torch.no_grad()
def generate_group(model, tokenizer, encoded, k, max_new_tokens, greedy=False, temperature=1.0, top_p=1.0,
                   generator=None, fmt=cot.AMBINB):
    device = lm.device_of(model)
    pad_id = int(tokenizer.pad_token_id)
    eos = set(prompt.eos_ids(tokenizer))
    close = fmt.answer_close
    window = len(prompt.segment_ids(tokenizer, close)) + 2
    ids, mask = lm.left_pad([e.prompt_ids for e in encoded], pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden, cache = lm.hidden_states(model, ids, mask, [e.audio for e in encoded], pos, use_cache=True)
    logits = lm.head_logits(model, hidden[:, -1])
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits = logits.repeat_interleave(k, dim=0)
        mask = mask.repeat_interleave(k, dim=0)
        pos = pos.repeat_interleave(k, dim=0)
    n_rows = len(encoded) * k
    suppress = torch.tensor(prompt.suppressed_ids(tokenizer, logits.shape[-1]), device=device)
    out = [[] for _ in range(n_rows)]
    stop = ["budget"] * n_rows
    active = torch.arange(n_rows, device=device)
    last_pos = pos[:, -1]
    for step in range(max_new_tokens):
        logits[:, suppress] = float("-inf")
        nxt = sampling.sample_next(logits, greedy, temperature, top_p, generator)
        keep = []
        for j, (row, tok) in enumerate(zip(active.tolist(), nxt.tolist())):
            out[row].append(tok)
            if tok in eos:
                stop[row] = "eos"
            elif close in tokenizer.decode(out[row][-window:], skip_special_tokens=True):
                stop[row] = "answer_close"
            else:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            active, nxt, mask, last_pos = active[sel], nxt[sel], mask[sel], last_pos[sel]
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        hidden, cache = lm.hidden_states(model, nxt[:, None], mask, None, last_pos[:, None], cache, use_cache=True)
        logits = lm.head_logits(model, hidden[:, -1])
    return [[(out[b * k + j], stop[b * k + j]) for j in range(k)] for b in range(len(encoded))]
