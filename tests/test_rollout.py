"""Group rollouts: the encoder runs once per utterance, audio reaches every forward, no audio token
is ever sampled, shared prefill equals transformers' own generation, readout slots are placed right;
every decode loop gives the tokens of the earlier loop (``rollout_reference``), one host sync per
step, LoRA merged while sampling and the exact weights back after. The encoder, audio and generate
checks run for each family (``family_model``: the Qwen2-Audio stand-in and a tiny Qwen2.5-Omni Thinker)."""

from __future__ import annotations

import pytest
import rollout_reference
import torch
from conftest_model import CLASSES, encode_waves, family_model, omni, omni_dir, omni_processor, tiny, tiny_dir, tone

from ambinb import config, cot, lm, merge, prompt, rollout
from ambinb import model as model_mod

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below

CFG = {**config.resolve(), "max_new_tokens": 48, "temperature": 1.0, "top_p": 1.0, "seed": 0,
       "prompt_preset": "ambinb", "readout_batch_size": 0,
       "rollout_decode": "dynamic"}  # the hooks below watch decode_step; lean has tests of its own
TRANSCRIPTS = ["No way, not again.", "The train leaves at seven.", "I miss her so much."]


def _waves():
    return [tone(1.0, 180), tone(2.0, 320), tone(1.5, 500)]


def test_encoder_runs_once_per_utterance_in_a_group_rollout(family_model):
    model, processor = family_model
    rows = []
    handle = lm.audio_tower(model).conv1.register_forward_hook(lambda m, a, o: rows.append(int(a[0].shape[0])))
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    group = rollout.rollout(model, processor, enc, CLASSES, CFG, k=8)
    assert len(rows) == 3  # three utterances (one tower call each), 24 trajectories
    assert len(group.flat()) == 24 and group.p_hat.shape == (3, 8, 4)
    # the naive reference runs it K times per utterance: the hook would see it
    texts = [prompt.prompt_text(processor, t, CLASSES) for t in TRANSCRIPTS[:1]]
    rollout.generate_naive(model, processor, texts, _waves()[:1], k=2, max_new_tokens=4)
    assert len(rows) == 3 + 2
    handle.remove()


def test_audio_features_reach_every_forward(family_model):
    """A hook where audio enters the language model: every forward of the rollout and of its readout
    that holds prompt positions carries, at the audio positions of each row, the projected tower
    output of that row's utterance; decoding steps never hold the raw <|AUDIO|> placeholder."""
    model, processor = family_model
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    with torch.no_grad():
        projected = [lm.project_audio(model, [e.audio]) for e in enc]
    placeholder = model.get_input_embeddings().weight[processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")]
    seen = []
    handle = lm.text_model(model).register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    k = 2
    rollout.rollout(model, processor, enc, CLASSES, CFG, k=k)
    handle.remove()
    prefill, decode = [e for e in seen if e.shape[1] > 1], [e for e in seen if e.shape[1] == 1]
    assert len(prefill) == 2 and decode  # the shared prefill and the one readout forward
    expected_owner = [[0, 1, 2], [0, 0, 1, 1, 2, 2]]  # prefill: one row per utterance; readout: K rows each
    for embeds, owners in zip(prefill, expected_owner):
        assert embeds.shape[0] == len(owners)
        for row, owner in zip(embeds, owners):
            hits = [int(((row[:, None] - p[None]).abs().amax(-1) < 1e-6).any(dim=0).sum()) for p in projected]
            assert hits[owner] == projected[owner].shape[0], "every audio feature of the row's utterance is there"
            assert all(h == 0 for j, h in enumerate(hits) if j != owner), "and no other utterance's"
    assert not torch.allclose(projected[0][:5], projected[1][:5])
    for embeds in seen:
        assert not (embeds - placeholder).abs().sum(-1).lt(1e-6).any(), "an unmerged <|AUDIO|> placeholder"


def test_no_audio_token_is_ever_sampled(tiny, monkeypatch):
    model, processor = tiny
    audio_ids = prompt.suppressed_ids(processor.tokenizer, lm.head(model).weight.shape[0])
    assert len(audio_ids) == 3  # the stand-in's head has a row per token and no more
    plain_head = lm.head_logits

    def audio_loving_head(m, hidden, float32=False):
        logits = plain_head(m, hidden, float32).clone()
        logits[..., audio_ids] += 1e4  # the model now prefers the audio tokens above all
        return logits

    monkeypatch.setattr(lm, "head_logits", audio_loving_head)
    enc = encode_waves(model, processor, _waves()[:2], TRANSCRIPTS[:2])
    ids, mask = lm.left_pad([enc[0].prompt_ids], 0, "cpu")
    with torch.no_grad():
        hidden, _ = lm.hidden_states(model, ids, mask, [enc[0].audio])
    assert int(lm.head_logits(model, hidden[:, -1]).argmax()) in audio_ids  # unsuppressed, one would be chosen
    for greedy in (True, False):
        groups = rollout.generate_group(model, processor.tokenizer, enc, k=4, max_new_tokens=12, greedy=greedy,
                                        generator=torch.Generator().manual_seed(0))
        tokens = [t for group in groups for ids, _ in group for t in ids]
        assert len(tokens) == 2 * 4 * 12 and not set(tokens) & set(audio_ids)


@pytest.mark.parametrize("decode", ["dynamic", "lean", "static"])
def test_head_rows_past_the_tokenizer_are_never_sampled(tiny, monkeypatch, decode):
    """The stand-in's head made 40 rows wider than its tokenizer (as Qwen2-Audio-7B's 156,032 rows
    outnumber its 151,649 ids), and those rows' logits raised above all: no row past the tokenizer is
    drawn, greedy or sampled; the suppressed ids are derived from the head's width."""
    model, processor = tiny
    tok = processor.tokenizer
    model.resize_token_embeddings(len(tok) + 40, mean_resizing=False)
    assert prompt.suppressed_ids(tok, lm.head(model).weight.shape[0])[3:] == list(range(len(tok), len(tok) + 40))
    plain_head = lm.head_logits

    def padding_loving_head(m, hidden, float32=False):
        logits = plain_head(m, hidden, float32).clone()
        logits[..., len(tok):] += 1e4
        return logits

    monkeypatch.setattr(lm, "head_logits", padding_loving_head)
    enc = encode_waves(model, processor, _waves()[:2], TRANSCRIPTS[:2])
    for greedy in (True, False):
        groups = rollout.generate_group(model, tok, enc, k=3, max_new_tokens=10, greedy=greedy, decode=decode,
                                        generator=torch.Generator().manual_seed(0))
        tokens = [t for group in groups for ids, _ in group for t in ids]
        assert len(tokens) == 2 * 3 * 10 and max(tokens) < len(tok)


def test_shared_prefill_greedy_equals_transformers_generate(family_model):
    """Greedy decoding through the cache-sharing loop (3 utterances, left-padded, K = 2) gives the
    same tokens as transformers' own generate on the processor's full inputs, one utterance at a time
    (for Qwen2.5-Omni: its 3-D rope positions from ``get_rope_index`` against ambinb's 1-D ones)."""
    model, processor = family_model
    waves = _waves()
    enc = encode_waves(model, processor, waves, TRANSCRIPTS)
    groups = rollout.generate_group(model, processor.tokenizer, enc, k=2, max_new_tokens=20, greedy=True)
    texts = [prompt.prompt_text(processor, t, CLASSES, utt_id=e.utt_id) for t, e in zip(TRANSCRIPTS, enc)]
    reference = rollout.generate_naive(model, processor, texts, waves, k=1, max_new_tokens=20, greedy=True)
    for group, ref in zip(groups, reference):
        assert group[0][0] == group[1][0] == ref[0]


def test_sampling_is_seeded(tiny):
    model, processor = tiny
    enc = encode_waves(model, processor, _waves()[:2], TRANSCRIPTS[:2])
    a = rollout.rollout(model, processor, enc, CLASSES, CFG, k=4)
    b = rollout.rollout(model, processor, enc, CLASSES, CFG, k=4)
    c = rollout.rollout(model, processor, enc, CLASSES, {**CFG, "seed": 1}, k=4)
    ids = lambda g: [t.token_ids for t in g.flat()]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert torch.equal(a.p_hat, b.p_hat)
    assert torch.allclose(a.p_hat.sum(-1), torch.ones(2, 4), atol=1e-5)
    assert len({tuple(x) for x in ids(a)}) > 1  # K samples differ from each other


def test_rollout_stops_and_reads_out_at_its_own_answer_tag(tiny):
    model, processor = tiny
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    group = rollout.rollout(model, processor, enc, CLASSES, {**CFG, "max_new_tokens": 200}, k=4)
    tok = processor.tokenizer
    finished = [t for t in group.flat() if t.answer_found]
    assert finished, "the warmed-up stand-in writes the answer tag"
    for t in finished:
        assert tok.decode(t.readout_ids, skip_special_tokens=True).endswith("<answer>")
        assert t.readout_ids == t.token_ids[: len(t.readout_ids)]
    for t in group.flat():
        if t.stop == "answer_close":
            assert t.text.endswith("</answer>")
        assert t.format_ok == cot.format_ok(t.text, CLASSES)
        assert len(t.token_ids) <= 200


def test_missing_answer_tag_is_appended_and_recorded(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    think = "<think>\nKeywords: loud\n</think>"
    ids = prompt.segment_ids(tok, think + " and more")
    t = rollout.make_trajectory(tok, "u0", ids, "budget", CLASSES)
    assert not t.answer_found and not t.format_ok
    assert t.readout_ids == prompt.segment_ids(tok, cot.answer_prefix(think + " and more"))
    ids = prompt.segment_ids(tok, cot.answer_prefix(think)) + prompt.segment_ids(tok, "sadness")
    t = rollout.make_trajectory(tok, "u0", ids, "budget", CLASSES)
    assert t.answer_found and t.readout_ids == prompt.segment_ids(tok, cot.answer_prefix(think))


def test_find_answer_slot_by_hand(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    ids = prompt.segment_ids(tok, "<think>x</think>\n<answer>") + prompt.segment_ids(tok, "anger")
    slot = rollout.find_answer_slot(tok, ids, "<answer>")
    assert tok.decode(ids[:slot]) == "<think>x</think>\n<answer>" and ids[slot:] == prompt.segment_ids(tok, "anger")
    assert rollout.find_answer_slot(tok, prompt.segment_ids(tok, "no tag here"), "<answer>") is None
    glued = prompt.segment_ids(tok, "<answer>\nanger")  # '>\n' is one token: the tag ends inside a token
    assert tok.convert_tokens_to_ids(">\u010a") in glued
    assert all(tok.decode(glued[:i]) != "<answer>" for i in range(len(glued) + 1))
    assert rollout.find_answer_slot(tok, glued, "<answer>") is None  # no clean slot: the tag gets appended


def test_slots_read_from_the_decode_loop_equal_the_read_out_forward(tiny, monkeypatch):
    """A trajectory that wrote its own answer tag is read out from the decode loop's kept logits; the
    others go through the forward, which sees only them; p_hat is the forward's either way."""
    model, processor = tiny
    tok = processor.tokenizer
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    class_ids = prompt.class_ids(tok, CLASSES)
    assert rollout.slot_scores_exact(model, class_ids)
    scores = []
    groups = rollout.generate_group(model, tok, enc, 8, 120, generator=torch.Generator().manual_seed(4),
                                    score_ids=[i[0] for i in class_ids], scores=scores)
    trajectories = [[rollout.make_trajectory(tok, e.utt_id, ids, stop, CLASSES) for ids, stop in group]
                    for e, group in zip(enc, groups)]
    from_loop = [t.answer_found and len(t.readout_ids) < len(t.token_ids) for g in trajectories for t in g]
    assert len(scores) == 24 and 0 < sum(from_loop) < 24  # both kinds occur
    static = []
    rollout.generate_group(model, tok, enc, 8, 120, generator=torch.Generator().manual_seed(4), decode="static",
                           score_ids=[i[0] for i in class_ids], scores=static)
    for row, t in enumerate(t for g in trajectories for t in g):  # the static loop keeps the same logits
        assert torch.allclose(static[row][: len(t.token_ids)], scores[row][: len(t.token_ids)], atol=1e-5)
    forward_rows = []
    real_read_out = rollout.readout.read_out

    def counting(model, prefixes, *args, **kwargs):
        forward_rows.append(len(prefixes))
        return real_read_out(model, prefixes, *args, **kwargs)

    monkeypatch.setattr(rollout.readout, "read_out", counting)
    fast = rollout.read_trajectories(model, enc, trajectories, class_ids, int(tok.pad_token_id), 0, scores)
    assert forward_rows == [24 - sum(from_loop)]
    every = rollout.read_trajectories(model, enc, trajectories, class_ids, int(tok.pad_token_id), 0, None)
    assert forward_rows[-1] == 24
    assert torch.allclose(fast, every, atol=1e-5) and not torch.equal(fast, torch.zeros_like(fast))
    for row in range(24):
        if not from_loop[row]:
            assert torch.equal(fast[row], every[row])  # the same forward


def _ids(groups):
    return [row for group in groups for row in group]


_REFERENCE: dict = {}


@pytest.mark.parametrize("decode", ["dynamic", "lean", "static", pytest.param("compiled", marks=pytest.mark.slow)])
def test_decode_loops_give_the_reference_loops_tokens(tiny, decode):
    """Greedy and seeded sampling, 3 utterances x K = 4, rows finishing at different steps (the close
    tag, an end token or the budget): the same ids and stop reasons as the earlier text-matching loop,
    also through ``lean``'s own decoding forward.
    The compiled loop (marker ``slow``: torch.compile takes minutes on a CPU) as well."""
    model, processor = tiny
    tok = processor.tokenizer
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    for greedy, budget, temp in ((True, 60, 1.0), (False, 120, 1.3)):  # at 1.3 some rows write <|im_end|> early
        if (greedy, budget) not in _REFERENCE:  # the earlier loop's result, computed once for both loops
            _REFERENCE[greedy, budget] = rollout_reference.generate_group(model, tok, enc, 4, budget, greedy, temp, 1.0,
                                                                          torch.Generator().manual_seed(7))
        ref = _REFERENCE[greedy, budget]
        got = rollout.generate_group(model, tok, enc, 4, budget, greedy, temp, 1.0, torch.Generator().manual_seed(7),
                                     decode=decode)
        assert _ids(got) == _ids(ref)
    assert {stop for _, stop in _ids(ref)} == {"answer_close", "eos", "budget"}  # rows left at different steps


def _steps(step_fn, first, n, drop_at):
    """``n`` greedy steps of ``step_fn`` from logits ``first``; at ``drop_at`` every other row leaves."""
    nxt, out = first.argmax(-1), []
    for s in range(n):
        if s == drop_at:
            keep = torch.arange(0, nxt.shape[0], 2)
            step_fn.select(keep)
            nxt = nxt[keep]
        out.append(step_fn(nxt))
        nxt = out[-1].argmax(-1)
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_the_lean_step_gives_the_cache_steps_logits(tiny, lora):
    """LeanStep against transformers' forward (CacheStep): left-padded prompts of three widths, K = 2,
    rows leaving mid-way; the same logits at every step, bit for bit, and through LoRA layers (their
    modules are called, not their base weights)."""
    model, processor = tiny
    model = _lora_model(model) if lora else model
    enc = encode_waves(model, processor, _waves(), TRANSCRIPTS)
    prompts, audio = [e.prompt_ids for e in enc], [e.audio for e in enc]
    with torch.no_grad():
        runs = []
        for make in (lambda c, m, p: lm.CacheStep(model, c, m, p), lambda c, m, p: lm.LeanStep(model, c, m, p, 12)):
            last, cache, mask, pos = lm.shared_prefill(model, prompts, audio, 2, int(processor.tokenizer.pad_token_id))
            first = lm.head_logits(model, last).repeat_interleave(2, dim=0)
            runs.append(_steps(make(cache, mask, pos[:, -1]), first, 12, drop_at=5))
    assert len(set(len(p) for p in prompts)) == 3 and runs[0][0].shape[0] == 6 and runs[0][-1].shape[0] == 3
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    if lora:  # the same prefill, the first step without the adapters: other logits, so the step applies them
        with torch.no_grad():
            last, cache, mask, pos = lm.shared_prefill(model, prompts, audio, 2, int(processor.tokenizer.pad_token_id))
            first = lm.head_logits(model, last).repeat_interleave(2, dim=0)
            with model.disable_adapter():
                bare = lm.LeanStep(model, cache, mask, pos[:, -1], 1)(first.argmax(-1))
        assert not torch.allclose(bare, runs[1][0], atol=1e-4)


def test_the_lean_step_refuses_what_it_does_not_reproduce_and_its_full_room(tiny, omni):
    model, processor = tiny
    enc = encode_waves(model, processor, _waves()[:1], TRANSCRIPTS[:1])
    with torch.no_grad():
        last, cache, mask, pos = lm.shared_prefill(model, [enc[0].prompt_ids], [enc[0].audio], 1, 0)
        step = lm.LeanStep(model, cache, mask, pos[:, -1], room=2)
        nxt = lm.head_logits(model, last).argmax(-1)
        step(step(nxt).argmax(-1))
        with pytest.raises(RuntimeError, match="no room left"):
            step(nxt)
    config_ = lm.text_model(omni[0]).config
    assert lm.LeanStep.problems(config_) == ["model_type 'qwen2_5_omni_text' (qwen2 only)"]
    with pytest.raises(ValueError, match="LeanStep reproduces Qwen2 .* model_type 'qwen2_5_omni_text'"):
        lm.LeanStep.check(config_)


def test_one_host_sync_per_decode_step(tiny, monkeypatch):
    """Values read back to the host (tolist, item, bool, int) during decoding: one per step."""
    model, processor = tiny
    enc = encode_waves(model, processor, _waves()[:2], TRANSCRIPTS[:2])
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__index__"):
        plain = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _p=plain, _n=name: reads.append(_n) or _p(t, *a))
    steps = []
    prefill = rollout._prefill
    monkeypatch.setattr(rollout, "_prefill", lambda *a: (reads.clear(), prefill(*a))[1])
    record = rollout._Rows.record
    monkeypatch.setattr(rollout._Rows, "record", lambda self, *a: (steps.append(len(reads)), record(self, *a))[1])
    rollout.generate_group(model, processor.tokenizer, enc, 2, 12, generator=torch.Generator().manual_seed(0))
    assert len(steps) >= 5
    assert [b - a for a, b in zip(steps, steps[1:])] == [1] * (len(steps) - 1)


def test_timings_name_the_phases(tiny):
    model, processor = tiny
    enc = encode_waves(model, processor, _waves()[:1], TRANSCRIPTS[:1])
    timings = {}
    rollout.rollout(model, processor, enc, CLASSES, {**CFG, "max_new_tokens": 6}, k=2, timings=timings)
    assert set(timings) == {"prefill", "sample", "stop", "forward"} and all(v > 0 for v in timings.values())


def _lora_model(model):
    lora = model_mod.apply_lora(model, config.resolve())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make merging a no-op
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return lora


def test_merged_lora_restores_the_exact_base_weights(tiny):
    model, processor = tiny
    lora = _lora_model(model)
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    layers = merge.lora_layers(lora)
    enc = encode_waves(model, processor, _waves()[:2], TRANSCRIPTS[:2])
    plain = rollout.generate_group(lora, processor.tokenizer, enc, 2, 24, greedy=True)
    with merge.merged_lora(lora) as n:
        assert n == len(layers) > 0 and all(layer.merged for layer in layers)
        changed = [nm for nm, p in lora.named_parameters() if not torch.equal(p, before[nm])]
        assert changed and all("base_layer.weight" in nm for nm in changed)
        merged = rollout.generate_group(lora, processor.tokenizer, enc, 2, 24, greedy=True)
    assert merged == plain  # the same greedy tokens through the merged weights
    assert not any(layer.merged for layer in layers)
    assert all(torch.equal(p, before[nm]) for nm, p in lora.named_parameters())  # bit for bit
    with pytest.raises(RuntimeError, match="inside"), merge.merged_lora(lora):
        raise RuntimeError("inside")
    assert all(torch.equal(p, before[nm]) for nm, p in lora.named_parameters())


def test_rollout_merges_lora_only_while_sampling(tiny, monkeypatch):
    model, processor = tiny
    lora = _lora_model(model)
    enc = encode_waves(model, processor, _waves()[:1], TRANSCRIPTS[:1])
    seen = []
    step = lm.decode_step
    monkeypatch.setattr(lm, "decode_step", lambda m, *a: (seen.append(merge.lora_layers(m) == []), step(m, *a))[1])
    rollout.rollout(lora, processor, enc, CLASSES, {**CFG, "max_new_tokens": 4}, k=2)
    rollout.rollout(lora, processor, enc, CLASSES, {**CFG, "max_new_tokens": 4, "rollout_merge_lora": False}, k=2)
    assert seen[:3] == [True] * 3 and seen[-3:] == [False] * 3
    assert merge.lora_layers(lora)  # unmerged again after the rollout
