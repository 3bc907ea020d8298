"""The vLLM rollout backend without vLLM: the missing package is named, and a stand-in ``vllm``
module (fixed completion texts) shows that the vLLM path yields the trajectories and p_hat of the
HF path for the same completions, that the requests carry one audio placeholder and the waveform,
and that the policy's merged weights are pushed exactly when they changed."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from conftest_model import CLASSES, encode_waves, tiny, tiny_dir, tone
from safetensors import safe_open

from ambinb import audio as A
from ambinb import config, cot, prompt, readout, rollout, vllm_rollout
from ambinb import model as model_mod

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below

K = 4
# (completion text, how vLLM ended it): the close tag, EOS left out of token_ids, the budget, EOS kept in token_ids
COMPLETIONS = [
    ("<think>The voice is tense.</think>\n<answer> anger</answer>", "close"),
    ("<think>Flat and slow.</think>\n<answer> sadness", "eos_dropped"),
    ("<think>Hard to tell, maybe", "length"),
    ("<think>ok</think>", "eos_kept"),
]


def _completion(tok, text, how):
    ids = prompt.segment_ids(tok, text)
    im_end = prompt.eos_ids(tok)[0]
    if how == "close":
        return types.SimpleNamespace(text=text, token_ids=ids, finish_reason="stop", stop_reason="</answer>")
    if how == "length":
        return types.SimpleNamespace(text=text, token_ids=ids, finish_reason="length", stop_reason=None)
    if how == "eos_dropped":
        return types.SimpleNamespace(text=text, token_ids=ids, finish_reason="stop", stop_reason=None)
    return types.SimpleNamespace(text=text, token_ids=ids + [im_end], finish_reason="stop", stop_reason=im_end)


def _hf_ids(tok, text, how):
    """The same completion as ambinb's own sampler reports it: the end token kept as the last id."""
    ids = prompt.segment_ids(tok, text)
    stop = {"close": "answer_close", "length": "budget"}.get(how, "eos")
    return (ids + [prompt.eos_ids(tok)[0]] if stop == "eos" else ids), stop


def _fake_vllm(tok, log):
    """A ``vllm`` module: request i's completion j is COMPLETIONS[(i + j) % 4]."""

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            log["params"].append(kwargs)

    class EngineModel:
        def load_weights(self, weights):
            log["pushes"].append({name: w.detach().clone() for name, w in weights})

    class LLM:
        def __init__(self, **kwargs):
            log["llm"].append(kwargs)
            self.engine_model = EngineModel()

        def apply_model(self, fn):
            return [fn(self.engine_model)]

        def generate(self, requests, params, use_tqdm=True):
            log["requests"].append(requests)
            n = params.kwargs["n"]
            return [types.SimpleNamespace(outputs=[_completion(tok, *COMPLETIONS[(i + j) % len(COMPLETIONS)])
                                                   for j in range(n)])
                    for i in range(len(requests))]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __name__="vllm")


@pytest.fixture(autouse=True)
def _fresh_samplers():
    vllm_rollout.reset()
    yield
    vllm_rollout.reset()


def _cfg(tiny_dir, **kw):
    return {**config.resolve(), "max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 3,
            "readout_batch_size": 0, "model_name_or_path": str(tiny_dir), "rollout_backend": "vllm", **kw}


def _setup(tiny, tiny_dir, monkeypatch):
    model, processor = tiny
    tok = processor.tokenizer
    waves = {"u0": tone(1.0, 220), "u1": tone(1.5, 440)}
    enc = encode_waves(model, processor, list(waves.values()), ["No way.", "Fine, thanks."])
    log = {"params": [], "llm": [], "requests": [], "pushes": []}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(tok, log))
    cfg = _cfg(tiny_dir)
    vllm_rollout.sampler_for(cfg, wave_of=waves.__getitem__)
    return model, processor, enc, waves, log, cfg


def test_missing_vllm_names_the_extra(tiny, tiny_dir, monkeypatch):
    model, processor = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'ambinb\[vllm\]'"):
        vllm_rollout.import_vllm()
    enc = encode_waves(model, processor, [tone(1.0, 220)], ["No way."])
    with pytest.raises(ImportError, match=r"rollout_backend: vllm needs the vllm package.*ambinb\[vllm\]"):
        rollout.rollout(model, processor, enc, CLASSES, _cfg(tiny_dir), k=2)
    with pytest.raises(ValueError, match="rollout_backend='vlm': choose one of"):
        rollout.rollout(model, processor, enc, CLASSES, _cfg(tiny_dir, rollout_backend="vlm"), k=2)


def test_vllm_path_reads_out_what_the_hf_path_reads_for_the_same_completions(tiny, tiny_dir, monkeypatch):
    model, processor, enc, waves, log, cfg = _setup(tiny, tiny_dir, monkeypatch)
    tok = processor.tokenizer
    got = rollout.rollout(model, processor, enc, CLASSES, cfg, k=K)

    # the HF path, its sampler replaced by the same completions in its own convention
    def same_completions(model_, tok_, encoded, k, *args, **kwargs):
        return [[_hf_ids(tok, *COMPLETIONS[(i + j) % len(COMPLETIONS)]) for j in range(k)] for i in range(len(encoded))]

    monkeypatch.setattr(rollout, "generate_group", same_completions)
    hf = rollout.rollout(model, processor, enc, CLASSES, {**cfg, "rollout_backend": "hf"}, k=K)
    assert [vars(t) for t in got.flat()] == [vars(t) for t in hf.flat()]
    torch.testing.assert_close(got.p_hat, hf.p_hat, rtol=0, atol=0)

    # and by hand: each completion is read out after its own answer tag, or after an appended one
    fmt = cot.AMBINB
    for i, e in enumerate(enc):
        for j in range(K):
            text, how = COMPLETIONS[(i + j) % len(COMPLETIONS)]
            if fmt.answer_open in text:
                prefix = text[: text.index(fmt.answer_open) + len(fmt.answer_open)]
            else:
                prefix = f"{text.strip()}\n{fmt.answer_open}"
            ids = e.prompt_ids + prompt.segment_ids(tok, prefix)
            with torch.no_grad():
                want = readout.read_out(model, [ids], [e.audio], prompt.class_ids(tok, CLASSES), tok.pad_token_id)[0]
            torch.testing.assert_close(got.p_hat[i, j], want, rtol=1e-5, atol=1e-6)
            traj = got.trajectories[i][j]
            assert traj.answer_found == (fmt.answer_open in text)
            assert traj.stop == {"close": "answer_close", "length": "budget"}.get(how, "eos")
            assert traj.text == text

    # what vLLM was asked: one request per utterance, one audio placeholder, its own waveform
    (requests,) = log["requests"]
    audio_id = tok.convert_tokens_to_ids(A.AUDIO_TOKEN)
    for e, req in zip(enc, requests):
        assert req["prompt_token_ids"].count(audio_id) == 1
        assert [t for t in req["prompt_token_ids"] if t != audio_id] == [t for t in e.prompt_ids if t != audio_id]
        ((wave, rate),) = req["multi_modal_data"]["audio"]
        assert rate == 16_000 and wave is waves[e.utt_id]
    (params,) = log["params"]
    assert params["n"] == K and params["temperature"] == 0.7 and params["top_p"] == 0.9 and params["max_tokens"] == 32
    assert params["stop"] == ["</answer>"] and params["include_stop_str_in_output"]
    assert params["stop_token_ids"] == prompt.eos_ids(tok)
    assert sorted(params["logit_bias"]) == sorted(prompt.suppressed_ids(tok, len(tok)))  # the head has no extra row
    assert set(params["logit_bias"].values()) == {-100.0}
    assert log["llm"][0]["limit_mm_per_prompt"] == {"audio": 1} and log["llm"][0]["model"] == str(tiny_dir)


def test_head_rows_past_the_tokenizer_are_banned_too(tiny, tiny_dir, monkeypatch):
    """A head 40 rows wider than the tokenizer (as Qwen2-Audio-7B's): vLLM is asked to ban those rows
    beside the three audio tokens."""
    model, processor, enc, _, log, cfg = _setup(tiny, tiny_dir, monkeypatch)
    tok = processor.tokenizer
    model.resize_token_embeddings(len(tok) + 40, mean_resizing=False)
    rollout.rollout(model, processor, enc, CLASSES, cfg, k=K)
    (params,) = log["params"]
    audio = tok.convert_tokens_to_ids(list(A.AUDIO_SPECIAL_TOKENS))
    assert sorted(params["logit_bias"]) == sorted(audio) + list(range(len(tok), len(tok) + 40))


def test_greedy_rollouts_stay_on_the_hf_path(tiny, tiny_dir, monkeypatch):
    model, processor, enc, _, log, cfg = _setup(tiny, tiny_dir, monkeypatch)
    out = rollout.rollout(model, processor, enc, CLASSES, cfg, k=1, greedy=True)
    assert log["requests"] == [] and out.p_hat.shape == (2, 1, len(CLASSES))


def test_merged_lora_weights_match_peft_merge_and_checkpoint_names(tiny, tiny_dir):
    model, _ = tiny
    lora = model_mod.apply_lora(model, config.resolve())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))  # peft starts B at zero: make the delta visible
    merged = dict(vllm_rollout.merged_weights(lora))
    reference = copy.deepcopy(lora).merge_and_unload().state_dict()
    reference = {vllm_rollout.checkpoint_name(n): w for n, w in reference.items()}
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    base = {vllm_rollout.checkpoint_name(n): p.detach() for n, p in lora.named_parameters() if ".base_layer." in n}
    n_lora = sum(1 for _, m in lora.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    assert len(merged) == n_lora > 0
    for name, w in merged.items():
        assert name in stored, name                       # the names vLLM's load_weights reads
        torch.testing.assert_close(w, reference[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(w, base[name], atol=1e-3)  # the LoRA delta is in


def test_weights_are_pushed_when_the_policy_changed_only(tiny, tiny_dir, monkeypatch):
    model, processor, enc, _, log, cfg = _setup(tiny, tiny_dir, monkeypatch)
    lora = model_mod.apply_lora(model, config.resolve())
    rollout.rollout(lora, processor, enc, CLASSES, cfg, k=K)
    rollout.rollout(lora, processor, enc, CLASSES, cfg, k=K)
    assert len(log["pushes"]) == 1                         # nothing changed between the two calls
    trainable = [p for p in lora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    for p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    rollout.rollout(lora, processor, enc, CLASSES, cfg, k=K)
    assert len(log["pushes"]) == 2
    now = dict(vllm_rollout.merged_weights(lora))
    assert log["pushes"][1].keys() == now.keys()
    assert all(torch.equal(log["pushes"][1][n], now[n]) for n in now)
    assert any(not torch.equal(log["pushes"][0][n], now[n]) for n in now)
    assert log["params"][0]["seed"] != log["params"][1]["seed"]  # each call samples afresh


def test_to_ids_and_stop_by_hand():
    done = types.SimpleNamespace(token_ids=[5, 6], finish_reason="stop", stop_reason="</answer>")
    assert vllm_rollout.to_ids_and_stop(done, "</answer>", [2, 0]) == ([5, 6], "answer_close")
    assert vllm_rollout.to_ids_and_stop(types.SimpleNamespace(token_ids=[5], finish_reason="length", stop_reason=None),
                                        "</answer>", [2, 0]) == ([5], "budget")
    assert vllm_rollout.to_ids_and_stop(types.SimpleNamespace(token_ids=[5], finish_reason="stop", stop_reason=None),
                                        "</answer>", [2, 0]) == ([5, 2], "eos")
    assert vllm_rollout.to_ids_and_stop(types.SimpleNamespace(token_ids=[5, 0], finish_reason="stop", stop_reason=0),
                                        "</answer>", [2, 0]) == ([5, 0], "eos")
    assert vllm_rollout.collapse_audio([1, 9, 9, 9, 4, 9, 9], 9) == [1, 9, 4, 9]
