"""Curation: the template writer and reader, schemas, the store, retries and faults against a local
OpenAI-compatible server driven through the real ``openai`` client, key hygiene, kill and resume."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from fake_openai import FakeOpenAI, audio_parts

from ambinb import config, cot, cues, curation, metrics, notebook

CLASSES = ["anger", "happiness", "sadness", "neutral"]
TRANSCRIPTS = ["Stop lying to me!", "I'm so happy for you.", "I miss her so much.", "The train leaves at seven.",
               "We got the house!", "I feel so alone.", "Get out of my way right now.", "The door was open.",
               "The meeting is on Thursday.", "I love this song so much.", "It's all my fault.",
               "This is completely unacceptable."]
KEY_ENV = "AMBINB_TEST_CURATION_KEY"
FAKE_KEY = "test-key-QX7-curation-never-written-9f41"  # distinctive, and not shaped like a real key


def make_table(n: int = 8, n_folds: int = 2) -> pd.DataFrame:
    """A dataset table in the ambinb schema without audio: votes cycle through a few patterns."""
    patterns = [(3, 0, 0, 0), (0, 2, 0, 1), (0, 0, 2, 2), (1, 0, 0, 4), (2, 2, 0, 0), (0, 0, 5, 0)]
    rows = []
    for i in range(n):
        votes = patterns[i % len(patterns)]
        speaker = f"spk{i % (2 * n_folds)}"
        row = {"utt_id": f"u{i:03d}", "dataset": "toy", "speaker": speaker, "session": i % n_folds + 1,
               "fold": i % n_folds, "transcript": TRANSCRIPTS[i % len(TRANSCRIPTS)] if i < len(TRANSCRIPTS)
               else f"Plain sentence number {i}.", "audio_path": "",
               "consensus": CLASSES[int(np.argmax(votes))], "n_votes": sum(votes)}
        row.update({f"votes_{c}": v for c, v in zip(CLASSES, votes, strict=True)})
        row.update({f"p_{c}": v / sum(votes) for c, v in zip(CLASSES, votes, strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def make_cfg(tmp_path: Path, **overrides) -> dict:
    base = dict(run_root=str(tmp_path / "runs"), prosody_cache=str(tmp_path / "cache"), backoff_base=0.001,
                backoff_max=0.01, curation_timeout=5.0, curation_concurrency=1, api_key_env=KEY_ENV)
    base.update(overrides)
    return config.resolve(dataset="toy", strategy="base", fold=0, overrides=base)


def item(p=(0.7, 0.0, 0.0, 0.3), transcript="Stop lying to me!", prosody=None, **kw) -> curation.Item:
    pros = prosody if prosody is not None else {"loudness": 1.3, "rate": 0.8, "pitch": 0.1, "pitch_var": 0.2,
                                                "tension": 0.9, "roughness": -0.1}
    return curation.Item("u1", transcript, "", tuple(CLASSES), tuple(p), pros, **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# --- evidence, hedges, template writer and reader ---------------------------------------------------

def test_text_cues_find_words_on_word_bounds():
    assert cues.text_cues("Stop lying to me!", CLASSES) == {"anger": ["stop", "lying"]}
    assert cues.text_cues("The bus stopped.", CLASSES) == {}  # "stop" is not "stopped"
    # "enough" (anger) inside "not good enough" (sadness) is not a cue of its own
    assert cues.text_cues("Maybe I'm just not good enough.", CLASSES) == {"sadness": ["not good enough"]}
    assert cues.text_cues("I can't wait, I love it but I miss him", CLASSES) == {
        "happiness": ["love", "can't wait"], "sadness": ["miss"]}


def test_supported_classes_follow_the_prototypes():
    assert cues.supported_classes("loudness", 1.2, CLASSES) == ["anger", "happiness"]
    assert cues.supported_classes("loudness", -0.6, CLASSES) == ["sadness"]
    assert cues.supported_classes("loudness", 0.2, CLASSES) == ["neutral"]
    assert cues.supported_classes("pitch", 0.2, CLASSES) == []  # neutral makes no claim on pitch level
    assert cues.supported_classes("rate", float("nan"), CLASSES) == []


def test_hedges_cover_the_bands():
    assert [curation.hedge(s) for s in (1.0, 0.85, 0.7, 0.5, 0.3, 0.2, 0.06, 0.04)] == [
        "almost certain", "almost certain", "likely", "about as likely as not", "a real possibility", "possible",
        "a faint possibility", None]


def test_synthesis_sentence_and_its_reading_by_hand():
    text = curation.synthesis_sentence(["anger", "sadness", "neutral"], [0.7, 0.0, 0.3])
    assert text == "Weighing text and voice, anger is likely and neutral is a real possibility."
    q = curation.read_hedges(text, ["anger", "sadness", "neutral"])
    np.testing.assert_allclose(q, [0.72 / 1.04, 0.0, 0.32 / 1.04])
    assert curation.read_hedges("No hedge at all.", CLASSES) is None


def test_template_reader_mixes_hedges_and_cited_cues_by_hand():
    think = cot.render_think(
        ["x"], "Words (cue for anger).",
        {"Volume": "loud (cue for anger or happiness).", "Speed": "s.", "Pitch": "p.", "Tone": "t."},
        "Weighing text and voice, anger is likely and neutral is a real possibility.")
    # cues: anger 1 + 1/2, happiness 1/2 -> + 0.5 each -> (2, 1, 0.5, 0.5) / 4
    cues = np.array([2.0, 1.0, 0.5, 0.5]) / 4
    stated = np.array([0.72, 0.0, 0.0, 0.32]) / 1.04
    expected = 0.7 * stated + 0.3 * cues
    np.testing.assert_allclose(curation.read_template_cot(think, CLASSES), expected)
    resolved = think.replace("possibility.", "possibility. " + curation.RESOLVED_SENTENCE)
    np.testing.assert_allclose(curation.read_template_cot(resolved, CLASSES), 0.8 * stated + 0.2 * cues)


def test_template_cot_is_deterministic_well_formed_and_names_majority_and_minority():
    it = item()
    think = curation.template_cot(it)
    assert think == curation.template_cot(it)
    assert cot.format_ok(cot.render_output(think, "anger"), CLASSES)
    parts = cot.parse_think(think)
    assert all(parts[k] for k in ("keywords", "text", "audio", "synthesis"))
    assert all(f"{a}:" in parts["audio"] for a in cot.AUDIO_ASPECTS)
    assert "majority reading is anger" in parts["synthesis"] and "minority reading is neutral" in parts["synthesis"]
    assert "Volume: much louder than a typical voice (cue for anger or happiness)." in parts["audio"]
    assert "Pitch: close to a typical pitch level; close to a typical pitch variation (cue for" in parts["audio"]
    assert "speaker" not in think
    assert not any(ch.isdigit() for ch in parts["synthesis"])


def test_template_cot_words_the_speaker_reference_when_asked():
    audio = cot.parse_think(curation.template_cot(item(reference="speaker")))["audio"]
    assert "Volume: much louder than the speaker's usual (cue for anger or happiness)." in audio
    assert "close to the speaker's usual pitch level" in audio and "typical" not in audio
    corpus = curation.template_cot(item())
    # the same cues are cited either way: the reader's distribution does not depend on the reference
    np.testing.assert_allclose(curation.read_template_cot(corpus, CLASSES),
                               curation.read_template_cot(curation.template_cot(item(reference="speaker")), CLASSES))


def test_template_synthesis_with_tied_leaders_names_no_majority():
    synthesis = cot.parse_think(curation.template_cot(item(p=(0.4, 0.4, 0.2, 0.0))))["synthesis"]
    assert "No single reading dominates: anger and happiness are evenly balanced" in synthesis
    assert "the minority reading is sadness." in synthesis and "majority" not in synthesis


def test_template_attempts_focus_then_resolve():
    it = item(p=(0.0, 0.0, 0.0, 1.0))  # the words and the voice say anger, the target says neutral
    first, second, third = (curation.template_cot(it, k) for k in (1, 2, 3))
    assert "(cue for anger" in first and "(cue for anger" not in second
    assert curation.RESOLVED_SENTENCE not in second and curation.RESOLVED_SENTENCE in third


def test_contradicted_target_is_rejected_and_agreeing_one_accepted():
    backend = curation.TemplateBackend()
    agreeing = curation.curate_one(backend, item(p=(1.0, 0, 0, 0)), 0.05, 3, "v1")
    contradicted = curation.curate_one(backend, item(p=(0, 0, 1.0, 0)), 0.05, 3, "v1")
    assert agreeing["status"] == "accepted" and agreeing["validation_js"] <= 0.05
    assert contradicted["status"] == "rejected" and len(contradicted["attempts"]) == 3
    js_values = [a["js"] for a in contradicted["attempts"]]
    assert contradicted["validation_js"] == min(js_values) > 0.05
    assert contradicted["cot"] == min(contradicted["attempts"], key=lambda a: a["js"])["cot"]
    # the recorded JS is the metric's JS between the target and the recorded reader distribution
    q = np.array([[contradicted["validation"][c] for c in CLASSES]])
    assert abs(metrics.js(np.array([[0, 0, 1.0, 0]]), q)[0] - contradicted["validation_js"]) < 1e-5


def test_writer_chat_names_the_reference_of_the_measured_prosody():
    corpus = curation.generation_messages(item())[1]["content"]
    assert ("Measured prosody relative to a typical voice of the corpus (openSMILE eGeMAPS): "
            "Volume: much louder than a typical voice.") in corpus
    speaker = curation.generation_messages(item(reference="speaker"))[1]["content"]
    assert "relative to this speaker's usual voice" in speaker and "much louder than the speaker's usual" in speaker


def test_no_audio_is_said_not_invented():
    think = curation.template_cot(item(prosody={}))
    assert think.count("not measured (no audio for this utterance)") == 4


# --- schemas -------------------------------------------------------------------------------------

GOOD = {"keywords": ["loud", '"stop"'], "text": "Angry words.",
        "audio": {"Volume": "loud", "Speed": "fast", "Pitch": "high", "Tone": "tense"},
        "synthesis": "Mostly anger, with a real chance of neutral."}


def test_parse_generation_accepts_the_schema_and_a_code_fence():
    assert curation.parse_generation(json.dumps(GOOD))["audio"]["Tone"] == "tense"
    assert curation.parse_generation("```json\n" + json.dumps(GOOD) + "\n```")["keywords"] == GOOD["keywords"]


@pytest.mark.parametrize("content, message", [
    (json.dumps(GOOD)[:40], "not valid JSON"),
    ("", "empty answer"),
    ("[1, 2]", "not an object"),
    (json.dumps({**GOOD, "keywords": "loud"}), "keywords must be a non-empty list"),
    (json.dumps({**GOOD, "audio": {"Volume": "x"}}), "audio lacks ['Speed', 'Pitch', 'Tone']"),
    (json.dumps({**GOOD, "synthesis": ""}), "synthesis must be a non-empty string"),
    (json.dumps({**GOOD, "synthesis": "anger 67%, neutral 33%"}), "numeric shares"),
    (json.dumps({**GOOD, "synthesis": "anger about 0.7"}), "numeric shares"),
])
def test_parse_generation_rejects_with_the_reason(content, message):
    with pytest.raises(curation.AttemptError, match=re.escape(message)):
        curation.parse_generation(content)


def test_parse_validation():
    q = curation.parse_validation('{"distribution": {"Anger": 0.6, "neutral": 0.4}}', CLASSES)
    np.testing.assert_allclose(q, [0.6, 0, 0, 0.4])
    np.testing.assert_allclose(curation.parse_validation('{"distribution": {"anger": 0.505, "sadness": 0.5}}',
                                                         CLASSES), [0.505 / 1.005, 0, 0.5 / 1.005, 0])
    for bad, message in [('{"distribution": {"fear": 1.0}}', "unknown label 'fear'"),
                         ('{"distribution": {"anger": 0.5}}', "sums to 0.5000"),
                         ('{"distribution": {"anger": true}}', "not a probability"),
                         ('{"distribution": {"anger": -0.1, "sadness": 1.1}}', "not a probability"),
                         ('{"dist": [1]}', "expected {\"distribution\"")]:
        with pytest.raises(curation.AttemptError, match=re.escape(message)):
            curation.parse_validation(bad, CLASSES)


def test_backoff_delay_doubles_within_jitter_and_is_seeded():
    rng = random.Random(0)
    delays = [curation.backoff_delay(k, 1.0, 30.0, rng) for k in range(7)]
    for k, d in enumerate(delays):
        ceiling = min(30.0, 2.0**k)
        assert ceiling / 2 <= d <= ceiling
    rng2 = random.Random(0)
    assert delays == [curation.backoff_delay(k, 1.0, 30.0, rng2) for k in range(7)]


def test_cost_from_prices_by_hand(tmp_path):
    cfg = make_cfg(tmp_path, price_prompt_per_1k=0.0025, price_completion_per_1k=0.01)
    assert curation.cost_usd({"prompt": 2000, "completion": 500}, cfg) == pytest.approx(0.01)


# --- the store -------------------------------------------------------------------------------------

def test_store_ignores_and_repairs_a_truncated_last_line(tmp_path, caplog):
    store = curation.CotStore(tmp_path / "cot.jsonl")
    store.append({"utt_id": "a", "prompt_version": "v1", "status": "accepted"})
    with open(store.path, "a") as fh:
        fh.write('{"utt_id": "b", "prompt_vers')  # a crash mid-write
    assert [r["utt_id"] for r in store.records()] == ["a"]
    assert "truncated last line" in caplog.text
    store.repair()
    store.append({"utt_id": "b", "prompt_version": "v1", "status": "accepted"})
    assert [r["utt_id"] for r in lines(store.path)] == ["a", "b"]


def test_store_names_a_corrupt_line(tmp_path):
    path = tmp_path / "cot.jsonl"
    path.write_text('{"utt_id": "a", "prompt_version": "v1"}\nnot json\n{"utt_id": "c", "prompt_version": "v1"}\n')
    with pytest.raises(ValueError, match="cot.jsonl, line 2"):
        curation.CotStore(path).records()


def test_load_curated_keeps_the_latest_record_per_key(tmp_path):
    store = curation.CotStore(tmp_path / "cot.jsonl")
    store.append({"utt_id": "a", "prompt_version": "v1", "status": "failed", "accepted": False})
    store.append({"utt_id": "a", "prompt_version": "v2", "status": "accepted", "accepted": True})
    store.append({"utt_id": "a", "prompt_version": "v1", "status": "accepted", "accepted": True})
    df = curation.load_curated(store.path)
    assert len(df) == 2 and set(df["status"]) == {"accepted"}
    assert len(curation.load_curated(store.path, "v2")) == 1
    assert curation.load_curated(tmp_path / "none.jsonl").empty


# --- the template run end to end -------------------------------------------------------------------

def test_curate_template_train_only_resumes_and_feeds_training(tmp_path):
    df = make_table(12)
    cfg = make_cfg(tmp_path)
    summary = curation.curate(cfg, df, progress=False)
    path = curation.store_path(cfg)
    records = lines(path)
    train_ids = set(df.loc[df["fold"] != 0, "utt_id"])
    assert {r["utt_id"] for r in records} == train_ids and len(records) == len(train_ids)
    assert summary["utterances"] == len(train_ids) and summary["skipped"] == 0
    assert summary["accepted"] + summary["rejected"] + summary["failed"] == len(train_ids)
    assert summary["tokens_prompt"] == 0 and summary["cost_usd"] == 0
    for r in records:
        assert set(r) >= {"utt_id", "cot", "p_gt", "accepted", "validation_js", "attempts", "backend", "model",
                          "prompt_version", "tokens"}
        assert r["backend"] == "template" and r["prompt_version"] == cfg["prompt_version"]
        assert cot.parse_think(r["cot"])["synthesis"]
    # rerun: nothing new, same file
    before = path.read_bytes()
    again = curation.curate(cfg, df, progress=False)
    assert again["skipped"] == len(train_ids) and again["run"]["utterances"] == 0 and path.read_bytes() == before
    cots = curation.accepted_cots(cfg)
    assert set(cots) == {r["utt_id"] for r in records if r["accepted"]}
    assert json.loads((path.parent / "summary.json").read_text())["accepted"] == summary["accepted"]
    assert {r["prosody_reference"] for r in records} == {cfg["prosody_reference"]} == {"corpus"}
    # a new prompt version curates afresh beside the old records
    curation.curate({**cfg, "prompt_version": cfg["prompt_version"] + "-next"}, df, progress=False)
    assert len(lines(path)) == 2 * len(train_ids)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A small toy corpus with real speech (``root/toy``) and a prosody cache (``root/cache``) that the
    tests needing audio share."""
    from ambinb.toy import ensure_toy

    root = tmp_path_factory.mktemp("speech")
    return root, ensure_toy(root / "toy", n=18, seed=5, sessions=3)


def test_curate_template_on_real_speech_cites_measured_prosody(tmp_path, speech):
    root, df = speech
    cfg = make_cfg(tmp_path, prosody_workers=1, prosody_cache=str(root / "cache"))
    summary = curation.curate(cfg, df, progress=False)
    records = lines(curation.store_path(cfg))
    assert len(records) == summary["utterances"] == int((df["fold"] != 0).sum())
    audio_steps = [cot.parse_think(r["cot"])["audio"] for r in records]
    assert not any("not measured" in a for a in audio_steps)
    assert sum("than a typical voice" in a for a in audio_steps) > len(records) // 2
    assert not any("speaker" in a for a in audio_steps)


def test_curate_refuses_another_writer_under_the_same_prompt_version(tmp_path):
    df = make_table(6)
    cfg = make_cfg(tmp_path)
    curation.curate(cfg, df, progress=False)

    class Other(curation.TemplateBackend):
        model = "other-model"

    with pytest.raises(curation.CurationError, match="set a new prompt_version"):
        curation.curate(cfg, make_table(8), backend=Other(), progress=False)


def test_one_prompt_version_holds_one_prosody_reference(tmp_path):
    """Records worded against the corpus are not reused, nor trained on, under the speaker reference
    (and a record written before the reference was recorded counts as speaker-relative)."""
    df = make_table(6)
    cfg = make_cfg(tmp_path)
    curation.curate(cfg, df, progress=False)
    speaker = {**cfg, "prosody_reference": "speaker"}
    with pytest.raises(curation.CurationError, match=r"worded against \['corpus'\].*set a new prompt_version"):
        curation.curate(speaker, make_table(8), progress=False)
    with pytest.raises(curation.CurationError, match="prosody_reference='speaker'"):
        curation.accepted_cots(speaker)
    assert curation.accepted_cots(cfg)
    legacy = {"utt_id": "old", "prompt_version": "v0", "status": "accepted", "accepted": True, "cot": "x"}
    curation.CotStore(curation.store_path(cfg)).append(legacy)
    assert curation.accepted_cots({**speaker, "prompt_version": "v0"}) == {"old": "x"}
    with pytest.raises(curation.CurationError, match=r"\['speaker'\]"):
        curation.accepted_cots({**cfg, "prompt_version": "v0"})


# --- the openai backend against the local fake server ----------------------------------------------

@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


def openai_cfg(tmp_path, srv, **kw):
    return make_cfg(tmp_path, backend="openai", curation_model="fake-audio-model", base_url=srv.base_url, **kw)


def test_openai_backend_happy_path_tokens_cost_and_concurrency(tmp_path, server, key_env):
    df = make_table(12)
    cfg = openai_cfg(tmp_path, server, curation_concurrency=3, price_prompt_per_1k=1.0, price_completion_per_1k=2.0)
    summary = curation.curate(cfg, df, subset="all", progress=False)
    assert summary["accepted"] == 12 and summary["attempts"] == 12
    assert server.count("write") == 12 and server.count("read") == 12
    assert summary["tokens_prompt"] > 0 and summary["tokens_completion"] > 0
    assert summary["cost_usd"] == pytest.approx((summary["tokens_prompt"] * 1.0
                                                 + summary["tokens_completion"] * 2.0) / 1000, abs=1e-6)
    assert all(c["auth"] == f"Bearer {FAKE_KEY}" for c in server.calls)
    reads = [c for c in server.calls if c["kind"] == "read"]
    assert all("Listeners' split" not in json.dumps(c["body"]) for c in reads), "the reader must not see the target"
    rec = lines(curation.store_path(cfg))[0]
    assert rec["backend"] == "openai" and rec["model"] == "fake-audio-model"
    assert cot.format_ok(cot.render_output(rec["cot"], "anger"), CLASSES)


def test_openai_sends_audio_only_when_asked(tmp_path, server, key_env):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF-not-really-a-wav")
    it = curation.Item("u1", "Stop lying to me!", str(wav), tuple(CLASSES), (1.0, 0, 0, 0), {})
    curation.OpenAIBackend(openai_cfg(tmp_path, server, send_audio=True)).generate(it, 1)
    curation.OpenAIBackend(openai_cfg(tmp_path, server, send_audio=False)).generate(it, 1)
    sent = [audio_parts(c["body"]) for c in server.calls]
    assert sent[0] == [{"data": base64.b64encode(wav.read_bytes()).decode(), "format": "wav"}]
    assert sent[1] == []


def test_rate_limits_and_server_errors_are_retried_with_backoff(tmp_path, server, key_env):
    waits = []
    cfg = openai_cfg(tmp_path, server, backoff_base=0.5, backoff_max=8.0)
    backend = curation.OpenAIBackend(cfg, sleep=waits.append)
    server.push("write", "429", "500", "429")
    rec = curation.curate_one(backend, item(p=(1.0, 0, 0, 0)), 0.05, 3, "v1")
    assert rec["status"] == "accepted" and len(rec["attempts"]) == 1
    assert server.count("write") == 4
    # retry k waits within [c/2, c], c = min(cap, base * 2**k); retry-after 0 never shortens it
    assert len(waits) == 3
    for k, w in enumerate(waits):
        assert 0.5 * 2**k / 2 <= w <= 0.5 * 2**k


def test_timeouts_are_retried(tmp_path, key_env):
    with FakeOpenAI(slow_seconds=1.0) as srv:
        cfg = openai_cfg(tmp_path, srv, curation_timeout=0.2)
        srv.push("read", "slow")
        rec = curation.curate_one(curation.OpenAIBackend(cfg), item(p=(1.0, 0, 0, 0)), 0.05, 3, "v1")
        assert rec["status"] == "accepted" and srv.count("read") == 2


def test_transport_that_never_recovers_fails_the_attempt(tmp_path, server, key_env):
    cfg = openai_cfg(tmp_path, server, curation_retries=2)
    server.push("write", *["500"] * 3)
    rec = curation.curate_one(curation.OpenAIBackend(cfg), item(p=(1.0, 0, 0, 0)), 0.05, 2, "v1")
    assert rec["attempts"][0]["error"].startswith("transport: gave up after 2 retries (InternalServerError")
    assert rec["status"] == "accepted" and len(rec["attempts"]) == 2  # the second attempt got through


def test_truncated_json_and_wrong_schema_use_up_attempts_then_fail(tmp_path, server, key_env):
    cfg = openai_cfg(tmp_path, server)
    backend = curation.OpenAIBackend(cfg)
    server.push("write", "truncated", "wrong_schema")
    server.push("read", "wrong_schema")
    rec = curation.curate_one(backend, item(p=(1.0, 0, 0, 0)), 0.05, 3, "v1")
    errors = [a["error"] for a in rec["attempts"]]
    assert "writer: answer is not valid JSON" in errors[0]
    assert "writer: schema: keywords must be a non-empty list" in errors[1]
    assert "reader: schema: expected {\"distribution\"" in errors[2]
    assert rec["status"] == "failed" and rec["cot"] is None and rec["error"] == errors[2]
    assert rec["tokens"]["completion"] > 0  # malformed answers still cost tokens


def test_far_reading_is_rejected_then_rewritten_with_feedback(tmp_path, server, key_env):
    cfg = openai_cfg(tmp_path, server)
    server.push("read", "far")
    rec = curation.curate_one(curation.OpenAIBackend(cfg), item(p=(0.6, 0, 0, 0.4)), 0.05, 3, "v1")
    assert [a["accepted"] for a in rec["attempts"]] == [False, True] and rec["status"] == "accepted"
    assert rec["attempts"][0]["js"] > 0.5
    second_write = [c for c in server.calls if c["kind"] == "write"][1]
    assert "An earlier analysis of this utterance was read as" in json.dumps(second_write["body"])


def test_failed_records_are_redone_on_rerun(tmp_path, server, key_env):
    df = make_table(4)
    cfg = openai_cfg(tmp_path, server, curation_attempts=1)
    server.push("write", "wrong_schema")
    first = curation.curate(cfg, df, subset="all", progress=False)
    assert first["failed"] == 1
    second = curation.curate(cfg, df, subset="all", progress=False)
    assert second["failed"] == 0 and second["accepted"] == 4 and second["run"]["utterances"] == 1
    assert len(curation.load_curated(curation.store_path(cfg))) == 4


def test_to_curate_by_hand():
    done = {("a", "v1"): {"status": "accepted"}, ("b", "v1"): {"status": "failed"}, ("x", "v1"): {"status": "failed"},
            ("c", "v0"): {"status": "accepted"}}
    assert curation.to_curate(["a", "b", "c"], done, "v1", redo_failed=True) == (["b", "c"], 1)
    assert curation.to_curate(["a", "b", "c"], done, "v1", redo_failed=False) == (["c"], 0)


def test_redo_failed_retries_only_this_runs_utterances_and_says_how_many(tmp_path, server, key_env, capsys):
    df = make_table(12, n_folds=3)
    cfg = openai_cfg(tmp_path, server, curation_attempts=1, curation_give_up_after=20)
    server.push("write", *["wrong_schema"] * 8)
    assert curation.curate(cfg, df, progress=False)["failed"] == 8  # fold 0's training rows (folds 1, 2) all fail
    calls = len(server.calls)
    summary = curation.curate({**cfg, "fold": 1}, df, progress=True)  # fold 1 trains on folds 0 and 2
    asked = {c["transcript"] for c in server.calls[calls:] if c["kind"] == "write"}
    assert asked == set(df.loc[df["fold"] != 1, "transcript"]), "only fold 1's training utterances are asked for"
    assert summary["retried_failed"] == 4 and summary["run"]["utterances"] == 8  # fold 2's 4 failures, fold 0's 4 new
    assert "(0 already done, 4 earlier failures retried)" in capsys.readouterr().out
    latest = curation.load_curated(curation.store_path(cfg)).set_index("utt_id")["status"]
    assert set(latest[df.loc[df["fold"] == 1, "utt_id"]]) == {"failed"}, "fold 1's own rows were left alone"
    calls = len(server.calls)
    again = curation.curate({**cfg, "fold": 0, "redo_failed": False}, df, progress=False)
    assert again["retried_failed"] == 0 and again["run"]["utterances"] == 0 and len(server.calls) == calls


# --- a server that cannot answer ----------------------------------------------------------------------

def closed_port() -> int:
    """A loopback port where nothing listens (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_outage_watch_counts_streaks_of_one_kind_by_hand():
    now = [0.0]
    watch = curation.Outage("http://127.0.0.1:9/v1", 3, 10.0, clock=lambda: now[0])
    for kind in ("connection", "connection", "status 500", "connection", "connection"):  # a new kind starts afresh
        watch.failure(kind, "refused")
    with pytest.raises(curation.CurationError, match=re.escape("cannot reach http://127.0.0.1:9/v1 after 3 attempts "
                                                               "(refused)")):
        watch.failure("connection", "refused")
    with pytest.raises(curation.CurationError, match="cannot reach"):
        watch.check()  # every worker sees the stop from then on

    watch = curation.Outage("http://h/v1", 3, 10.0, clock=lambda: now[0])
    watch.success()  # once the server has answered, a streak must also last 10 s
    for t in (0.0, 0.0, 0.0, 0.0, 9.9):
        now[0] = t
        watch.failure("status 500", "boom")
    watch.success()
    now[0] = 20.0
    watch.failure("status 500", "boom")  # the success ended the streak: this one starts at 20 s
    now[0] = 30.0
    watch.failure("status 500", "boom")
    with pytest.raises(curation.CurationError, match=re.escape("http://h/v1 failed 3 requests in a row the same way")):
        watch.failure("status 500", "boom")


def test_a_server_that_is_not_there_stops_the_run_within_two_minutes(tmp_path, key_env):
    df = make_table(8)
    defaults = config.defaults()
    transport = {k: defaults[k] for k in ("backoff_base", "backoff_max", "curation_retries", "curation_concurrency",
                                          "curation_timeout", "curation_attempts")}  # as a user would run it
    with FakeOpenAI() as srv:
        cfg = openai_cfg(tmp_path, srv, **transport)
        curation.curate(cfg, df, progress=False)  # fold 0's training rows, while the server is up
        url = srv.base_url
    path = curation.store_path(cfg)
    stored = path.read_bytes()
    outcome: dict = {}

    def run() -> None:
        try:
            curation.curate(cfg, df, subset="all", progress=False)  # nothing listens on that port any more
        except curation.CurationError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "still retrying after two minutes"
    assert f"cannot reach {url} after 8 attempts (APIConnectionError" in outcome["error"]
    assert f"kept in {path}" in outcome["error"]
    assert path.read_bytes().startswith(stored), "nothing already stored is lost"


def test_a_closed_port_stops_a_single_worker_too(tmp_path, key_env):
    cfg = make_cfg(tmp_path, backend="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1",
                   curation_give_up_after=4)
    with pytest.raises(curation.CurationError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1 after 4 attempts"):
        curation.curate(cfg, make_table(6), subset="all", progress=False)
    assert not curation.store_path(cfg).exists() or not lines(curation.store_path(cfg))


@pytest.mark.parametrize("fault, error", [("401", "AuthenticationError, status 401"),
                                          ("403", "PermissionDeniedError, status 403"),
                                          ("quota", "quota is exhausted (RateLimitError, status 429)")])
def test_refused_credentials_stop_every_worker_at_once(tmp_path, key_env, fault, error):
    with FakeOpenAI(always=fault) as srv:
        cfg = openai_cfg(tmp_path, srv, curation_concurrency=4, backoff_base=1.0, backoff_max=30.0)
        started = time.monotonic()
        with pytest.raises(curation.CurationError) as info:
            curation.curate(cfg, make_table(8), subset="all", progress=False)
        assert time.monotonic() - started < 30
        message = str(info.value)
        assert message.startswith(f"{srv.base_url}: the server refused the request") and error in message
        assert len(srv.calls) <= 4, "no worker asked again once the run had stopped"


def test_a_lasting_outage_stops_the_run_and_a_brief_one_is_waited_out(tmp_path, key_env):
    df = make_table(12)
    with FakeOpenAI() as srv:  # after a success, six server errors in a row, then answers again
        srv.push("any", "ok", "ok", *["500"] * 6)
        cfg = openai_cfg(tmp_path / "brief", srv, curation_give_up_after=4, curation_outage_s=60.0)
        assert curation.curate(cfg, df, subset="all", progress=False)["accepted"] == 12
    with FakeOpenAI(always="500") as srv:  # after a success, server errors for good
        srv.push("any", "ok", "ok")
        cfg = openai_cfg(tmp_path / "lasting", srv, curation_give_up_after=4, curation_outage_s=0.3)
        with pytest.raises(curation.CurationError) as info:
            curation.curate(cfg, df, subset="all", progress=False)
        message = str(info.value)
        assert message.startswith(f"{srv.base_url} failed") and "in a row the same way (InternalServerError" in message
    records = lines(curation.store_path(cfg))
    assert records[0]["status"] == "accepted" and len(records) < len(df)


def test_a_server_whose_answers_are_never_usable_stops_the_run(tmp_path, key_env):
    with FakeOpenAI(always="wrong_schema") as srv:
        cfg = openai_cfg(tmp_path, srv, curation_give_up_after=4)
        with pytest.raises(curation.CurationError, match=re.escape("gave 4 unusable answers in a row (writer: schema: "
                                                                   "keywords must be")):
            curation.curate(cfg, make_table(8), subset="all", progress=False)
        assert srv.count("write") == 4  # three attempts for the first utterance, one for the second
    assert [r["status"] for r in lines(curation.store_path(cfg))] == ["failed"]


def test_rate_limits_never_stop_the_run(tmp_path, server, key_env):
    cfg = openai_cfg(tmp_path, server, curation_give_up_after=2)
    server.push("write", *["429"] * 8)  # attempt 1 gives up after 6 tries; attempt 2 gets through
    rec = curation.curate_one(curation.OpenAIBackend(cfg), item(p=(1.0, 0, 0, 0)), 0.05, 3, "v1")
    assert rec["status"] == "accepted" and len(rec["attempts"]) == 2


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = make_cfg(tmp_path, backend="openai")
    with pytest.raises(curation.CurationError, match=KEY_ENV):
        curation.make_backend(cfg)
    assert curation.api_key({**cfg, "base_url": "http://127.0.0.1:9/v1"}) == "no-key"


def test_the_key_is_never_written(tmp_path, server, key_env, caplog):
    caplog.set_level("DEBUG")
    cfg = openai_cfg(tmp_path, server)
    server.push("write", "429", "truncated")
    server.push("any", "500")
    curation.curate(cfg, make_table(6), subset="all", progress=True)
    assert server.calls and all(FAKE_KEY in c["auth"] for c in server.calls)  # it was used ...
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cot.jsonl" for p in written) and any(p.name == "summary.json" for p in written)
    for p in written:  # ... and appears in no file written, nor in the log
        assert FAKE_KEY.encode() not in p.read_bytes(), p
    assert FAKE_KEY not in caplog.text
    assert "api_key" not in json.dumps({k: v for k, v in cfg.items() if k != "api_key_env"})


def test_notebook_02_takes_overrides_and_sends_audio_to_the_server(tmp_path, key_env, speech):
    from ambinb import notebook

    root, _ = speech
    overrides = {"send_audio": True, "api_key_env": KEY_ENV, "toy_n": 18, "toy_seed": 5, "toy_sessions": 3,
                 "prosody_workers": 1, "prosody_cache": str(root / "cache"), "backoff_base": 0.001, "backoff_max": 0.01}
    with FakeOpenAI() as srv:
        notebook.execute("02_curate_cot", tmp_path / "02.ipynb", {
            "backend": "openai", "model": "fake-audio-model", "base_url": srv.base_url,
            "data_root": str(root / "toy"), "run_root": str(tmp_path / "runs"), "overrides": overrides})
        writes = [c for c in srv.calls if c["kind"] == "write"]
    table = pd.read_csv(root / "toy" / "labels.csv")
    assert len(writes) == int((table["fold"] != 0).sum()) and all(c["body"]["model"] == "fake-audio-model"
                                                                  for c in writes)
    for call in writes:  # every writer request carried its own utterance's wav
        (sent,) = audio_parts(call["body"])
        wavs = table.loc[table["transcript"] == call["transcript"], "audio_path"]
        assert sent["format"] == "wav" and base64.b64decode(sent["data"]) in {Path(p).read_bytes() for p in wavs}


CREMA_D = Path(os.environ.get("AMBINB_CREMA_D", Path(__file__).resolve().parents[2] / "shared" / "data" / "crema-d"))
CREMA_D_TABLES = ("processedResults/tabulatedVotes.csv", "SentenceFilenames.csv", "VideoDemographics.csv")


def test_notebook_02_on_label_only_crema_d_needs_no_model_and_reports_a_dead_server_soon(tmp_path, key_env,
                                                                                         monkeypatch):
    """backend openai on a label-only CREMA-D copy (the real vote tables, linked; no AudioWAV/) with the
    dataset's model, qwen2_audio_7b, a hub id never downloaded here. The tower probe says in one line why
    it skipped and loads nothing, and a curation server that is not there stops the chapter within two
    minutes. The kernel's Hugging Face cache is an empty folder and the hub is offline, so a model load
    would fail at once in the probe's cell, never reaching the curation."""
    if not all((CREMA_D / name).is_file() for name in CREMA_D_TABLES):
        pytest.skip(f"the CREMA-D tables are not at {CREMA_D} (set AMBINB_CREMA_D)")
    copy = tmp_path / "crema-d"
    (copy / "processedResults").mkdir(parents=True)
    for name in CREMA_D_TABLES:
        (copy / name).symlink_to(CREMA_D / name)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = config.resolve(dataset="crema_d", data_root=str(copy))
    assert (cfg["model"], cfg["model_name_or_path"]) == ("qwen2_audio_7b", "Qwen/Qwen2-Audio-7B-Instruct")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    overrides = {"api_key_env": KEY_ENV, "prosody_cache": str(tmp_path / "cache"),
                 "feature_cache_dir": str(tmp_path / "features")}
    started = time.monotonic()
    with pytest.raises(notebook.NotebookError) as info:
        notebook.execute("02_curate_cot", tmp_path / "02.ipynb", {
            "dataset": "crema_d", "backend": "openai", "base_url": url, "data_root": str(copy),
            "run_root": str(tmp_path / "runs"), "overrides": overrides})
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"the dead server was reported after {elapsed:.0f} s"
    assert re.match(rf"02_curate_cot.ipynb failed at In \[\d+\]: CurationError: cannot reach {re.escape(url)} "
                    r"after \d+ attempts", str(info.value)), str(info.value)
    executed = nbformat.read(re.search(r"the executed notebook is (\S+)\)", str(info.value))[1], as_version=4)
    (cell,) = [c for c in executed.cells if c.get("id") == "cell-probe"]
    printed = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream")
    assert printed.splitlines() == [
        "tower probe skipped: none of the 7442 utterances has audio (a label-only copy); "
        "Qwen/Qwen2-Audio-7B-Instruct is not on this machine (a hub id, not in the Hugging Face cache). "
        "Curation needs neither; the chapter goes on without the probe"]
    assert "ModelLoadError" not in json.dumps(executed), "a model load was attempted"
    assert not (tmp_path / "features").exists() and not (tmp_path / "hf" / "hub").exists()


# --- kill and resume ---------------------------------------------------------------------------------

RUNNER = """
import json, sys
import pandas as pd
from ambinb import curation
cfg = json.load(open(sys.argv[1]))
curation.curate(cfg, pd.read_json(sys.argv[2], orient="records"), subset="all", progress=False)
"""


def test_kill_and_resume_loses_nothing_and_duplicates_nothing(tmp_path, key_env):
    df = make_table(24)
    df["transcript"] = [f"Plain sentence number {i}." for i in range(len(df))]  # one transcript per utterance
    with FakeOpenAI(delay=0.04) as srv:
        cfg = openai_cfg(tmp_path, srv, curation_concurrency=2)
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        df.to_json(tmp_path / "table.json", orient="records")
        (tmp_path / "runner.py").write_text(RUNNER)
        path = curation.store_path(cfg)
        env = {**os.environ, "PYTHONPATH": str(Path(curation.__file__).parents[2])}  # the project root
        proc = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cfg.json"),
                                 str(tmp_path / "table.json")], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < 5):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {r["utt_id"] for r in curation.CotStore(path).records()}
        assert 5 <= len(done_before) < len(df), "the run was not killed part-way"
        transcripts_done = set(df.loc[df["utt_id"].isin(done_before), "transcript"])
        calls_before = len(srv.calls)

        summary = curation.curate(cfg, df, subset="all", progress=False)

        new_calls = srv.calls[calls_before:]
        assert not {c["transcript"] for c in new_calls} & transcripts_done, "finished utterances were redone"
        assert summary["skipped"] == len(done_before) and summary["accepted"] == len(df)
        ids = [r["utt_id"] for r in lines(path)]  # every line parses: no truncated tail remains
        assert sorted(ids) == sorted(df["utt_id"]), "every utterance exactly once"



def test_two_curation_runs_on_one_store_write_each_utterance_once(tmp_path, key_env):
    """Two processes curate one store at once: the second waits for the first (ambinb.runlock), then reads
    the store again and curates nothing; every utterance is curated, and written, once."""
    df = make_table(12)
    df["transcript"] = [f"Plain sentence number {i}." for i in range(len(df))]  # one transcript per utterance
    with FakeOpenAI(delay=0.08) as srv:  # about 2 s of curation: the second process arrives meanwhile
        cfg = openai_cfg(tmp_path, srv)
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        df.to_json(tmp_path / "table.json", orient="records")
        (tmp_path / "runner.py").write_text(RUNNER)
        env = {**os.environ, "PYTHONPATH": str(Path(curation.__file__).parents[2])}  # the project root
        procs = [subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cfg.json"),
                                   str(tmp_path / "table.json")], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    waited = [o for o in outs if re.search(r"curation is running in process \d+; waiting for it", o)]
    assert len(waited) == 1, outs                                  # they overlapped, and one waited
    assert sorted(r["utt_id"] for r in lines(curation.store_path(cfg))) == sorted(df["utt_id"])
    assert [srv.count("write", t) for t in df["transcript"]] == [1] * len(df)   # curated (and paid for) once
