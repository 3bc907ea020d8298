"""ambinb: ambiguity-aware emotion reasoning in large audio-language models."""

__version__ = "0.1.0"
