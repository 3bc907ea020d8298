"""Qwen2-Audio's real vocabulary on the CPU (ambinb.vocab), and the 7B path's text side through it:
prompt -> group rollout -> read-out -> format check on a tiny random model with the real vocabulary
size, the class names' token splits, id-based stop detection, and the audio tokens where the
processor puts them.

Reference ids come from outside this project: Qwen2/Qwen2.5 chat prompts as published tokenised
(``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>`` ... in transformers' and vLLM's
tests and examples), Qwen2-Audio-7B-Instruct's config (``audio_token_index`` 151646) and its
tokenizer_config (``<|audio_bos|>`` 151647, ``<|audio_eos|>`` 151648)."""

from __future__ import annotations

import hashlib
import random

import answer_slots
import numpy as np
import pytest
import torch

from ambinb import audio as A
from ambinb import config, cot, labels, lm, prompt, rollout, stopping, vocab
from ambinb.standin.architecture import tiny_config

CLASSES = ["anger", "happiness", "sadness", "neutral"]
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n"
        "<|im_start|>assistant\n")
CHAT_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 3838, 374, 220, 17,
            5519, 220, 17, 30, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def processor():
    return vocab.qwen2_audio_processor()


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


def test_the_ranks_are_qwen2s():
    path = vocab.ranks_path()
    ranks = vocab.read_ranks(path)
    vocab.check_ranks(ranks, hashlib.sha256(path.read_bytes()).hexdigest())
    assert ranks[b"Hello"] == 9707 and ranks[b" world"] == 1879 and ranks[b"\n"] == 198
    with pytest.raises(vocab.VocabError, match="ranks 0.."):
        vocab.check_ranks({k: v for k, v in ranks.items() if v != 5})
    with pytest.raises(vocab.VocabError, match="sha256"):
        vocab.check_ranks(ranks, "0" * 64)


def test_known_ids_and_special_tokens(tok):
    assert tok(CHAT, add_special_tokens=False)["input_ids"] == CHAT_IDS
    assert tok.convert_tokens_to_ids(list(vocab.SPECIAL_TOKENS)) == [151643, 151644, 151645, 151646, 151647, 151648]
    assert len(tok) == 151_649 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.decode(CHAT_IDS, skip_special_tokens=True) == CHAT.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_class_name_splits(tok):
    """On their own, after a space, and glued to the answer tag's ``>`` as a model would write them
    without the space (the merge that sets the answer format: ``>s ad ness``, ``>f ear``)."""
    split = {name: tok.convert_ids_to_tokens(tok(name, add_special_tokens=False)["input_ids"])
             for name in [" Disgust", " neutral", *CLASSES, "disgust", "fear", "<answer>sadness", "<answer>fear"]}
    assert split[" Disgust"] == ["\u0120Dis", "g", "ust"] and split[" neutral"] == ["\u0120neutral"]
    assert split["anger"] == ["anger"] and split["neutral"] == ["neutral"]
    assert split["happiness"] == ["h", "appiness"] and split["sadness"] == ["sad", "ness"]
    assert split["disgust"] == ["dis", "g", "ust"] and split["fear"] == ["f", "ear"]
    assert split["<answer>sadness"] == ["<", "answer", ">s", "ad", "ness"]
    assert split["<answer>fear"] == ["<", "answer", ">f", "ear"]
    assert tok.convert_ids_to_tokens(prompt.segment_ids(tok, "</answer>")) == ["</", "answer", ">"]


@pytest.mark.parametrize("preset", sorted(cot.PRESETS))
def test_the_scored_answer_is_what_the_model_writes_for_every_class(tok, preset):
    """Every class of the toy, IEMOCAP and CREMA-D, in a complete completion (think block or none,
    answer, close tag, ``<|im_end|>``) tokenised whole by the real tokenizer: the rollout's slot is
    clean and the scored ids follow it (:func:`answer_slots.check_slot`), and each scored name is the
    one token ``Ġname``, so the read-out is the softmax over single class-token logits at one slot."""
    scored = answer_slots.check_every_dataset(tok, cot.get_format(preset))
    for dataset, classes in labels.CLASSES.items():
        assert scored[dataset] == [["\u0120" + c] for c in classes], dataset


def test_multi_token_names_are_scored_whole_and_names_that_cross_the_slot_fail(tok):
    """A user's names that stay several tokens after the space keep all of them, as the model writes
    them; a name whose last character merges with the close tag (``.</`` is one pre-token) is refused."""
    names = ["Anger", "Sadness", "Disgust", "self-conscious"]
    think = cot.render_think(*answer_slots.THINK_PARTS)
    for name in names:
        answer_slots.check_slot(tok, think, name, names, cot.AMBINB)
    assert [tok.convert_ids_to_tokens(ids) for ids in prompt.class_ids(tok, names)] == [
        ["\u0120Ang", "er"], ["\u0120Sad", "ness"], ["\u0120Dis", "g", "ust"], ["\u0120self", "-conscious"]]
    with pytest.raises(prompt.PromptError, match="'other.'.* does not tokenise"):
        prompt.class_ids(tok, ["anger", "other."])


def test_chat_template_puts_the_audio_where_the_processor_expects_it(processor, tok):
    wave = (0.1 * np.sin(np.arange(32_000) / 10)).astype(np.float32)  # 2.0 s -> 50 audio tokens
    text = prompt.prompt_text(processor, "No way, not again.", CLASSES, utt_id="u0")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: "
                           "<|audio_bos|><|AUDIO|><|audio_eos|>\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    by_processor = processor(text=[text], audio=[wave], sampling_rate=A.SAMPLE_RATE, return_tensors="pt")
    ids = by_processor["input_ids"][0].tolist()
    assert ids == prompt.prompt_ids(tok, text, 50)  # ambinb's expansion is the processor's
    first = ids.index(151646)
    assert ids[first - 1] == 151647 and ids[first:first + 50] == [151646] * 50 and ids[first + 50] == 151648
    assert tok.decode(ids[: first + 1]).endswith("user\nAudio 1: <|audio_bos|><|AUDIO|>")


def test_close_tag_automaton_agrees_with_decoding(tok):
    """Random ids mixed with pieces of the tag (spelt whole, split, glued to text or a newline): the
    automaton stops at the first token whose decoded prefix contains the tag, as decoding would."""
    auto = stopping.tag_automaton(tok, "</answer>")
    pieces = [prompt.segment_ids(tok, s) for s in ["</answer>", "</", "answer", ">\n", ">", " </", "ans", "wer>",
                                                   " hello", "<", "/", "a", "<|im_start|>"]]
    rng = random.Random(0)
    for _ in range(200):
        seq = [i for _ in range(rng.randint(1, 8)) for i in rng.choice(pieces)]
        state, found = torch.zeros(1, dtype=torch.long), None
        for j, t in enumerate(seq):
            state = auto.step(state, torch.tensor([t]))
            found = j if found is None and int(state) == auto.length else found
        text = [tok.decode(seq[: j + 1], skip_special_tokens=True) for j in range(len(seq))]
        assert found == next((j for j, s in enumerate(text) if "</answer>" in s), None), seq
    padded = auto.to("cpu", vocab.MODEL_VOCAB_SIZE)  # ids of the padded head past the tokenizer: no text
    assert padded.table.shape == (vocab.MODEL_VOCAB_SIZE, 9)
    assert padded.step(torch.tensor([4]), torch.tensor([vocab.MODEL_VOCAB_SIZE - 1])).tolist() == [4]


def _tiny_real_vocab_model(tok):
    from transformers import Qwen2AudioForConditionalGeneration

    conf = tiny_config(tok, hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32,
                               audio_hidden_size=16, audio_layers=1, audio_heads=2, audio_ffn_size=32)
    conf.text_config.vocab_size = vocab.MODEL_VOCAB_SIZE  # the real embedding rows (padded past the tokenizer)
    torch.manual_seed(0)
    return Qwen2AudioForConditionalGeneration(conf).eval()


def test_prompt_rollout_readout_and_format_on_the_real_vocabulary(processor, tok, monkeypatch):
    """A random model steered to write a gold completion: the rollout stops at the close tag it
    spells, the readout slot is its own answer tag, the format check passes; unsteered, the rows run
    their budget (random ids, padded-head ids included) and get the tag appended for the readout."""
    torch.set_num_threads(1)
    model = _tiny_real_vocab_model(tok)
    waves = [(0.2 * np.sin(np.arange(16_000 * s) * f)).astype(np.float32) for s, f in ((1, 0.05), (2, 0.09))]
    feats = A.AudioFeatureCache(model, processor.feature_extractor).features(["u0", "u1"], waves)
    enc = [prompt.Encoded(u, prompt.prompt_ids(tok, prompt.prompt_text(processor, t, CLASSES, utt_id=u), f.shape[0]), f)
           for u, t, f in zip(["u0", "u1"], ["No way, not again.", "The train leaves at seven."], feats)]
    think = ("<think>\nKeywords: loud\nStep 1 (text): Tense words.\nStep 2 (audio): Loud.\n"
             "Step 3 (synthesis): Anger.\n</think>")
    gold = prompt.completion_ids(tok, think, "anger")
    script = gold.ids[: gold.slot + gold.answer_len] + prompt.segment_ids(tok, "</answer>") + [151645]
    plain, calls = lm.head_logits, []

    def steered(m, hidden, float32=False):
        logits = plain(m, hidden, float32)
        if not float32:  # the rollout's head; the readout's (float32) stays the model's
            logits[..., script[min(len(calls), len(script) - 1)]] += 1e4
            calls.append(1)
        return logits

    cfg = {**config.resolve(), "max_new_tokens": 80, "readout_batch_size": 0}
    monkeypatch.setattr(lm, "head_logits", steered)
    group = rollout.rollout(model, processor, enc, CLASSES, cfg, k=3)
    for t in group.flat():
        assert t.stop == "answer_close" and t.token_ids == script[: len(script) - 1]
        assert t.answer_found and t.readout_ids == gold.ids[: gold.slot] and t.format_ok
        assert t.text.endswith("<answer> anger</answer>")
    assert group.p_hat.shape == (2, 3, 4) and torch.allclose(group.p_hat.sum(-1), torch.ones(2, 3), atol=1e-5)
    monkeypatch.setattr(lm, "head_logits", plain)
    free = rollout.rollout(model, processor, enc, CLASSES, {**cfg, "max_new_tokens": 12}, k=2)
    assert all(t.stop == "budget" and len(t.token_ids) == 12 and not t.format_ok for t in free.flat())
    assert all(t.readout_ids[-3:] == prompt.segment_ids(tok, "<answer>") for t in free.flat())
    assert cot.format_ok(tok.decode(script[:-1], skip_special_tokens=True), CLASSES)
