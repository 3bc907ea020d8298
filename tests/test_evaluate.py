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


def test_a_model_without_cot_is_judged_by_the_answer_alone(tiny, toy_corpus, tmp_path):
    model, processor = tiny
    _, df = toy_corpus
    train, test = labels.split(df, 0)
    cfg = _cfg(tmp_path, use_cot=False, strategy="sft_nocot")
    out = tmp_path / "runs" / "toy" / "sft_nocot" / "fold0"
    saved = evaluate.evaluate(model, processor, test.iloc[:4], cfg, out,
                              results.prior_distribution(labels.p_matrix(train)), progress=False)
    completions = results.read_predictions(out)["completion"]
    assert all(cot.answer_ok(c, CLASSES) for c in completions)
    assert saved["format_rate"] == 1.0 and saved["format_check"] == "answer"


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
