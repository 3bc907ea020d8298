"""Prompt -> rollouts -> readout -> metrics on the toy corpus, the ``base`` strategy, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest_model import CLASSES, tiny, tiny_dir, toy_corpus

from ambinb import audio as A
from ambinb import config, cot, evaluate, labels, metrics, prompt, results, rewards

FIXTURES = (tiny, tiny_dir, toy_corpus)  # pytest fixtures from conftest_model, used by name below


def _cfg(tmp_path, **extra):
    return config.resolve(overrides={"max_new_tokens": 160, "feature_cache_dir": "", "eval_batch_size": 4,
                                     "run_root": str(tmp_path / "runs"), **extra})


def test_evaluate_writes_predictions_and_metrics_on_the_toy_corpus(tiny, toy_corpus, tmp_path):
    model, processor = tiny
    _, df = toy_corpus
    train, test = labels.split(df, 0)
    p_prior = results.prior_distribution(labels.p_matrix(train))
    cfg = _cfg(tmp_path)
    out = tmp_path / "runs" / "toy" / "sft" / "fold0"
    result = evaluate.evaluate(model, processor, test, cfg, out, p_prior, progress=False)
    preds = results.read_predictions(out)
    assert list(preds["utt_id"]) == list(test["utt_id"])
    p_hat = np.array(preds["p_hat"].tolist())
    assert p_hat.shape == (len(test), 4) and np.allclose(p_hat.sum(axis=1), 1, atol=1e-5)
    assert all(isinstance(c, str) and c for c in preds["completion"])
    assert np.allclose(np.array(preds["p_gt"].tolist()), labels.p_matrix(test), atol=1e-6)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classes"] == CLASSES and saved["metrics"]["n"] == len(test)
    expected_js = metrics.js(labels.p_matrix(test), p_hat).mean()
    assert abs(saved["metrics"]["js"] - expected_js) < 1e-4  # scored from what was written
    assert 0 <= saved["format_rate"] <= 1 and saved["tower_calls"] == len(test) and saved["format_check"] == "cot"
    assert saved["prior"]["n"] == len(test) and "ci95" in saved
    assert result["metrics"]["js"] == saved["metrics"]["js"]


NOCOT = "<answer>sadness</answer>"
WITH_COT = ("<think>\nKeywords: soft\nStep 1 (text): Plain words.\nStep 2 (audio): Volume: soft. Speed: slow. "
            "Pitch: low. Tone: breathy.\nStep 3 (synthesis): Mostly sadness.\n</think>\n<answer>sadness</answer>")


def test_the_format_check_fits_the_variant():
    """A no-CoT answer passes the no-CoT check and fails the CoT check; a CoT completion the reverse."""
    assert cot.well_formed(NOCOT, CLASSES, use_cot=False) and not cot.well_formed(NOCOT, CLASSES, use_cot=True)
    assert cot.well_formed(WITH_COT, CLASSES, use_cot=True) and not cot.well_formed(WITH_COT, CLASSES, use_cot=False)
    assert cot.well_formed(" <answer>Sadness</answer>\n", CLASSES, use_cot=False)      # case and whitespace
    for broken in ("sadness", "<answer>rage</answer>", "<answer>sadness", "x <answer>sadness</answer>",
                   "<answer>sadness</answer><answer>anger</answer>"):
        assert not cot.well_formed(broken, CLASSES, use_cot=False), broken
    reasoner = cot.get_format("audio_reasoner")
    assert cot.well_formed("<RESPONSE>anger</RESPONSE>", CLASSES, reasoner, use_cot=False)
    # GRPO always reasons: its format reward keeps the CoT check
    assert rewards.format_reward([WITH_COT, NOCOT], classes=CLASSES) == [1.0, 0.0]


def test_a_model_without_cot_is_judged_by_what_it_writes(tiny, toy_corpus, tmp_path):
    """use_cot: false: p_hat is read out after prompt + answer tag, but the completion (and the format
    check) is the model's own short greedy generation, not an ``<answer>top class</answer>`` made up
    from p_hat. The untrained stand-in starts a think block, so it fails the answer-alone check."""
    model, processor = tiny
    _, df = toy_corpus
    train, test = labels.split(df, 0)
    rows = test.iloc[:4]
    cfg = _cfg(tmp_path, use_cot=False, strategy="sft_nocot")
    out = tmp_path / "runs" / "toy" / "sft_nocot" / "fold0"
    saved = evaluate.evaluate(model, processor, rows, cfg, out,
                              results.prior_distribution(labels.p_matrix(train)), progress=False)
    preds = results.read_predictions(out)
    completions = list(preds["completion"])
    encoded = prompt.encode_rows(rows, CLASSES, processor, A.AudioFeatureCache(model, processor.feature_extractor), cfg)
    p_direct, synthesized = evaluate.direct_readout(model, processor, encoded, CLASSES, cfg)
    written = evaluate.generate_answers(model, processor, encoded, CLASSES, cfg)
    assert completions == [text for text, _ in written]           # generated, and recorded as such
    assert completions != synthesized
    budget = evaluate.nocot_budget(processor.tokenizer, CLASSES, cot.AMBINB)
    assert all(0 < len(ids) <= budget for _, ids in written) and budget < cfg["max_new_tokens"]
    assert saved["format_check"] == "answer"
    assert saved["format_rate"] == pytest.approx(np.mean([cot.answer_ok(c, CLASSES) for c in completions]))
    assert saved["answer_tag_rate"] == pytest.approx(
        np.mean([evaluate.answer_found(c, CLASSES, cot.AMBINB) for c in completions]))
    assert saved["mean_completion_tokens"] == pytest.approx(np.mean([len(ids) for _, ids in written]))
    # p_hat is still the read-out after prompt + answer tag
    p_hat = np.array(preds["p_hat"].tolist())
    assert np.allclose(p_hat, p_direct / p_direct.sum(axis=1, keepdims=True), atol=1e-5)


def test_a_malformed_generation_fails_the_no_cot_format_check(tiny, toy_corpus, tmp_path, monkeypatch):
    """With generation forced to write a malformed answer for the first utterance and a well-formed
    one for the second, format_ok and answer_found follow the text; p_hat does not depend on it."""
    model, processor = tiny
    tok = processor.tokenizer
    _, df = toy_corpus
    rows = labels.split(df, 0)[1].iloc[:2]
    cfg = _cfg(tmp_path, use_cot=False, strategy="sft_nocot")
    written = {"sadness</answer>": "budget", "<answer>sadness</answer>": "answer_close"}
    budgets = []

    def fake_generate_group(model, tokenizer, encoded, k, max_new_tokens, **kwargs):
        budgets.append(max_new_tokens)
        return [[(tok.encode(text, add_special_tokens=False), stop)] for text, stop in written.items()]

    monkeypatch.setattr(evaluate.rollout, "generate_group", fake_generate_group)
    out = evaluate.predict(model, processor, rows, cfg, progress=False)
    assert out["completions"] == list(written)
    assert out["format_ok"] == [False, True]
    assert out["answer_found"] == [False, True]
    assert budgets == [evaluate.nocot_budget(tok, CLASSES, cot.AMBINB)]
    encoded = prompt.encode_rows(rows, CLASSES, processor, A.AudioFeatureCache(model, processor.feature_extractor), cfg)
    assert np.allclose(out["p_hat"], evaluate.direct_readout(model, processor, encoded, CLASSES, cfg)[0], atol=1e-6)


def test_run_base_evaluates_the_untouched_model_into_its_run_folder(toy_corpus, tmp_path):
    folder, df = toy_corpus
    cfg = _cfg(tmp_path, data_root=str(folder), toy_n=40, toy_seed=0, fold=1)
    result = evaluate.run_base(cfg, progress=False)
    out = tmp_path / "runs" / "toy" / "base" / "fold1"
    assert results.is_finished(out)
    assert result["strategy"] == "base" and result["fold"] == 1
    assert result["metrics"]["n"] == int((df["fold"] == 1).sum())


def test_prompt_lists_the_classes_and_transcript_and_bad_rows_are_named(tiny, toy_corpus):
    _, processor = tiny
    _, df = toy_corpus
    text = prompt.prompt_text(processor, "I told you already.", CLASSES, utt_id="u1")
    assert 'Transcript: "I told you already."' in text and "Classes: anger, happiness, sadness, neutral" in text
    assert text.count("<|AUDIO|>") == 1 and text.endswith("<|im_start|>assistant\n")
    reasoner = prompt.prompt_text(processor, "Hi.", CLASSES, preset="audio_reasoner")
    assert "<think>" not in reasoner and "Choose one of" in reasoner
    with pytest.raises(prompt.PromptError, match="Ses01F_x: empty transcript"):
        prompt.prompt_text(processor, "  ", CLASSES, utt_id="Ses01F_x")
    cache = A.AudioFeatureCache(tiny[0], processor.feature_extractor)
    bad = pd.DataFrame([{**df.iloc[0].to_dict(), "utt_id": "broken", "audio_path": "/nonexistent/broken.wav"}])
    with pytest.raises(A.AudioError, match="broken: cannot read audio file /nonexistent/broken.wav"):
        prompt.encode_rows(bad, CLASSES, processor, cache, config.resolve())


def test_completion_ids_place_the_slot_before_the_class_name(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    c = prompt.completion_ids(tok, "<think>\nx\n</think>", "sadness")
    assert tok.decode(c.ids[: c.slot]) == "<think>\nx\n</think>\n<answer>"
    assert c.ids[c.slot: c.slot + c.answer_len] == prompt.class_ids(tok, ["sadness"])[0]
    assert tok.decode(c.ids[c.slot + c.answer_len:]) == "</answer><|im_end|>"
    nocot = prompt.completion_ids(tok, "", "anger")
    assert tok.decode(nocot.ids[: nocot.slot]) == "<answer>"
