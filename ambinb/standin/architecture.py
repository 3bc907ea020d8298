"""The stand-in's architecture: a ``Qwen2AudioConfig`` of the real model at tiny sizes, and the word
embedding prior it starts from."""

from __future__ import annotations

from typing import Any

import torch

from ambinb import audio as audio_mod
from ambinb.standin.tokenizer import SPECIAL_TOKENS


def tiny_config(tokenizer: Any, *, hidden_size: int, layers: int, heads: int, kv_heads: int,
                intermediate_size: int, audio_hidden_size: int, audio_layers: int, audio_heads: int,
                audio_ffn_size: int) -> Any:
    """A ``Qwen2AudioConfig`` of the real architecture at tiny sizes (3,000 mel frames in, as the real one)."""
    from transformers import Qwen2AudioConfig  # heavy

    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    audio_config = {"model_type": "qwen2_audio_encoder", "num_mel_bins": audio_mod.N_MELS,
                    "encoder_layers": audio_layers, "encoder_attention_heads": audio_heads,
                    "encoder_ffn_dim": audio_ffn_size, "d_model": audio_hidden_size,
                    "max_source_positions": audio_mod.N_FRAMES // 2}
    text_config = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": hidden_size,
                   "intermediate_size": intermediate_size, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 4096,
                   "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
                   "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    return Qwen2AudioConfig(audio_config=audio_config, text_config=text_config,
                            audio_token_index=ids[audio_mod.AUDIO_TOKEN])


def share_word_embeddings(model: Any, tokenizer: Any) -> int:
    """Start each word token with the embedding and output row of its space-prefixed twin.

    Byte-level BPE spells a word differently after a space (``Ġfurious``) and after a quote mark
    (``furious``); a pretrained model has learnt that the two mean the same, a random one has not,
    and so cannot quote a transcript word it has seen. Copying the rows at initialisation (training
    then tells them apart) gives the stand-in that prior. Returns the number of pairs.
    """
    vocab = tokenizer.get_vocab()
    pairs = [(vocab[t[1:]], i) for t, i in sorted(vocab.items()) if t.startswith("Ġ") and t[1:] in vocab]
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            for plain, spaced in pairs:
                weight[plain] = weight[spaced]
    return len(pairs)

