"""The model families (ambinb.families) and Qwen2.5-Omni's real vocabulary on the CPU: the registry finds
each family by its checkpoints' model_type; each family's prompt ids and ``<|AUDIO|>`` count are its real
processor's (built locally around the tokenizer from the Qwen BPE ranks and a Whisper feature extractor);
Qwen2.5-Omni's special tokens have the ids its Thinker config names."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_model import CLASSES

from ambinb import audio as A
from ambinb import families, prompt, vocab

# Qwen2/Qwen2.5 chat ids as published tokenised (transformers' and vLLM's tests and examples)
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n"
        "<|im_start|>assistant\n")
CHAT_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 3838, 374, 220, 17,
            5519, 220, 17, 30, 151645, 198, 151644, 77091, 198]
# what the rendered user turn starts with, per family
USER_TURN = {"qwen2_audio": "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
             "qwen2_5_omni": "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Transcript:"}


@pytest.fixture(scope="module", params=sorted(USER_TURN))
def real_processor(request):
    build = {"qwen2_audio": vocab.qwen2_audio_processor, "qwen2_5_omni": vocab.qwen2_5_omni_processor}
    return request.param, build[request.param]()


def test_every_family_is_found_by_its_checkpoints_model_type():
    assert families.for_model_type("qwen2_audio").name == "qwen2_audio"
    assert {families.for_model_type(t).name for t in ("qwen2_5_omni", "qwen2_5_omni_thinker")} == {"qwen2_5_omni"}
    omni = families.for_model_type("qwen2_5_omni")
    assert omni.model_class == "Qwen2_5OmniThinkerForConditionalGeneration"  # the Thinker, never the Talker
    assert omni.projector == "" and omni.towers == ("audio_tower", "visual")
    with pytest.raises(ValueError, match=r"'gpt2' is of no known family \(known: qwen2_5_omni, qwen2_5_omni_thinker"):
        families.for_model_type("gpt2")


def test_omni_special_tokens_have_the_ids_of_its_thinker_config():
    from transformers import Qwen2_5OmniThinkerConfig

    tok = vocab.qwen2_5_omni_tokenizer()
    conf = Qwen2_5OmniThinkerConfig()
    ids = tok.convert_tokens_to_ids(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>"])
    assert ids == [conf.audio_token_id, conf.audio_start_token_id, conf.audio_end_token_id, conf.image_token_id,
                   conf.video_token_id]
    assert tok.convert_tokens_to_ids(["<|vision_bos|>", "<|vision_eos|>"]) == [151652, 151653]
    assert tok(CHAT, add_special_tokens=False)["input_ids"] == CHAT_IDS  # Qwen2.5's BPE: Qwen2's ranks
    assert len(tok) == 151_665 and tok.audio_token_id == 151646 and tok.eos_token == "<|im_end|>"


def test_the_prompt_ids_and_audio_count_are_the_processors(real_processor):
    """The chat rendered by the family's template, the ``<|AUDIO|>`` expanded by ambinb's rule, equals what
    the real processor makes of the same text and a 2.3 s clip (57 audio positions; two of Omni's 2 s chunks)."""
    name, processor = real_processor
    tok = processor.tokenizer
    wave = (0.1 * np.sin(np.arange(36_800) / 10)).astype(np.float32)
    text = prompt.prompt_text(processor, "No way, not again.", CLASSES, utt_id="u0")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + USER_TURN[name])
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    by_processor = processor(text=[text], audio=[wave], sampling_rate=A.SAMPLE_RATE, return_tensors="pt")
    n_audio = A.n_audio_tokens(wave.shape[0] // A.HOP)
    ids = by_processor["input_ids"][0].tolist()
    assert n_audio == 57 and ids.count(tok.convert_tokens_to_ids(A.AUDIO_TOKEN)) == n_audio
    assert ids == prompt.prompt_ids(tok, text, n_audio)
    first = ids.index(tok.convert_tokens_to_ids(A.AUDIO_TOKEN))
    assert ids[first - 1] == tok.convert_tokens_to_ids(A.AUDIO_BOS)
    assert ids[first + n_audio] == tok.convert_tokens_to_ids(A.AUDIO_EOS)
