"""SFT: the loss of Eq. 3 on real forwards of the tiny model, audio in every forward, its variants; the
audio and training checks for each family (``family_model``: the Qwen2-Audio stand-in, a tiny Qwen2.5-Omni)."""

import numpy as np
import pytest
import torch
from conftest_model import (
    assert_adapter_loads_back,
    encode_waves,
    family_model,
    omni,
    omni_dir,
    omni_processor,
    tiny,
    tiny_dir,
    tone,
)

from ambinb import config, cot, engine, lm, metrics, prompt, readout
from ambinb import model as model_mod
from ambinb import policy as policy_mod
from ambinb.examples import Example
from ambinb.strategies import sft

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below
AUDIO = {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.", "Tone": "tense."}
CFG = config.resolve(strategy="sft")  # ce_weight 1, kl_weight 1, answer_ce soft, eps 1e-10


def examples(model, processor, n=3):
    waves = [tone(1.0 + 0.4 * i, 180.0 + 90 * i) for i in range(n)]
    encoded = encode_waves(model, processor, waves, ["i told you already"] * n)
    think = cot.render_think(["loud", "fast"], "Irritated wording.", AUDIO, "Mostly anger, some neutral.")
    p = np.random.default_rng(0).dirichlet(np.ones(4), size=n)
    tok = processor.tokenizer
    return [Example(e.utt_id, e, prompt.completion_ids(tok, think, "anger"), p[i]) for i, e in enumerate(encoded)]


def test_completion_mask_by_hand():
    c = prompt.CompletionIds(ids=[11, 12, 13, 14, 15, 16], slot=3, answer_len=1)
    assert policy_mod.completion_mask(c, "soft") == [1, 1, 1, 0, 1, 1]
    assert policy_mod.completion_mask(c, "none") == [1, 1, 1, 0, 1, 1]
    assert policy_mod.completion_mask(c, "majority") == [1] * 6


def test_kl_term_equals_the_metric_on_the_model_core_readout(tiny):
    model, processor = tiny
    exs = examples(model, processor)
    strategy = sft.SFTStrategy(exs, ["anger", "happiness", "sadness", "neutral"], processor.tokenizer,
                               {**CFG, "ce_weight": 0.0})
    with torch.no_grad():
        loss, stats = strategy.loss(model, [0, 1, 2], step=0)
        prefixes = [ex.encoded.prompt_ids + ex.completion.ids[: ex.completion.slot] for ex in exs]
        p_hat = readout.read_out(model, prefixes, [ex.encoded.audio for ex in exs], strategy.class_ids,
                                 strategy.pad_id).numpy()
    expected = metrics.kl(np.stack([ex.p_gt for ex in exs]), p_hat).mean()
    assert stats["kl"] == pytest.approx(expected, rel=1e-4)
    assert float(loss) == pytest.approx(expected, rel=1e-4)       # ce_weight 0: the loss is the KL term


def test_ce_term_is_the_token_mean_nll_of_the_completion(tiny):
    model, processor = tiny
    exs = examples(model, processor, n=1)
    ex = exs[0]
    strategy = sft.SFTStrategy(exs, ["anger", "happiness", "sadness", "neutral"], processor.tokenizer,
                               {**CFG, "kl_weight": 0.0, "answer_ce": "majority"})
    with torch.no_grad():
        _, stats = strategy.loss(model, [0], step=0)
        ids = torch.tensor([ex.encoded.prompt_ids + ex.completion.ids])
        hidden, _ = lm.hidden_states(model, ids, torch.ones_like(ids), [ex.encoded.audio])
        logits = lm.head_logits(model, hidden)[0].float()
    start = len(ex.encoded.prompt_ids)
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-float(logp[start + t - 1, tok]) for t, tok in enumerate(ex.completion.ids)]
    assert stats["ce"] == pytest.approx(np.mean(nll), rel=1e-4)


def test_audio_reaches_the_training_forward_from_the_cache(family_model):
    model, processor = family_model
    exs = examples(model, processor)
    strategy = sft.SFTStrategy(exs, ["anger", "happiness", "sadness", "neutral"], processor.tokenizer, CFG)
    seen, tower_calls = {}, []
    text = lm.text_model(model)
    h1 = text.register_forward_pre_hook(lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"].detach()),
                                      with_kwargs=True)
    h2 = lm.audio_tower(model).conv1.register_forward_hook(lambda *a: tower_calls.append(1))
    try:
        strategy.loss(model, [0, 1, 2], step=0)
    finally:
        h1.remove()
        h2.remove()
    assert not tower_calls, "the frozen tower ran during training instead of the cached outputs being used"
    audio_id = lm.audio_token_id(model)
    for b, ex in enumerate(exs):
        ids = torch.tensor(ex.encoded.prompt_ids)
        positions = (ids == audio_id).nonzero()[:, 0]
        assert len(positions) == ex.encoded.audio.shape[0] > 0
        torch.testing.assert_close(seen["embeds"][b, positions], lm.project_audio(model, [ex.encoded.audio]).detach())
    first = (torch.tensor(exs[0].encoded.prompt_ids) == audio_id).nonzero()[:, 0]
    second = (torch.tensor(exs[1].encoded.prompt_ids) == audio_id).nonzero()[:, 0]
    n = min(len(first), len(second))
    assert not torch.allclose(seen["embeds"][0, first[:n]], seen["embeds"][1, second[:n]])


@pytest.mark.parametrize(("family_model", "lora"), [("qwen2_audio", True), ("qwen2_audio", False),
                                                     ("qwen2_5_omni", True)], indirect=["family_model"])
def test_training_changes_what_trains_and_never_the_tower(family_model, tmp_path, lora, monkeypatch):
    model, processor = family_model
    exs = examples(model, processor)
    cfg = {**CFG, "lora": lora, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
           "lora_target_regex": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}
    model = model_mod.prepare_trainable(model, cfg)
    tower = {n: p.detach().clone() for n, p in lm.audio_tower(model).named_parameters()}
    before = {n: p.detach().clone() for n, p in engine.trainable_parameters(model)}
    strategy = sft.SFTStrategy(exs, ["anger", "happiness", "sadness", "neutral"], processor.tokenizer, CFG)
    tc = engine.TrainConfig.with_defaults(lr=1e-2, max_steps=2, batch_size=2)
    history = engine.train(model, strategy, tc, tmp_path, progress=False)
    assert len(history) == 2 and all(np.isfinite(r["loss"]) for r in history)
    after = dict(engine.trainable_parameters(model))
    assert any(not torch.equal(before[n], after[n]) for n in before)
    if lora:
        assert all("lora_" in n for n in before)
        assert_adapter_loads_back(model, processor, exs[0], tmp_path, monkeypatch)
    for n, p in lm.audio_tower(model).named_parameters():
        assert torch.equal(tower[n], p) and not p.requires_grad


def test_unknown_answer_ce_is_refused(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="answer_ce"):
        sft.SFTStrategy([], ["anger", "sadness"], processor.tokenizer, {**CFG, "answer_ce": "hard"})
