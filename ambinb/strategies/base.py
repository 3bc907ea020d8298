"""What every training strategy does alike: it trains on examples drawn by index.

:class:`ExampleStrategy` holds a run's :class:`ambinb.examples.Example` s and answers the parts of
:class:`ambinb.engine.Strategy` that only concern them (``build``, ``num_examples``, ``utt_ids``); a
strategy adds its ``loss`` and ``summary``.
"""

from __future__ import annotations

from typing import Any

from ambinb.examples import Example


class ExampleStrategy:
    """What every strategy does alike: it trains on ``self.examples`` (:class:`ambinb.examples.Example`),
    drawn by index, and is built from one run's model, processor, examples, classes and params."""

    examples: list[Example]

    @classmethod
    def build(cls, model: Any, processor: Any, examples: list[Example], classes: list[str],
              cfg: dict[str, Any]) -> ExampleStrategy:
        """The strategy of one run (:class:`ambinb.engine.Strategy`)."""
        return cls(model, processor, examples, classes, cfg)

    def hold_run(self, processor: Any, examples: list[Example], classes: list[str], cfg: dict[str, Any]) -> None:
        """Keep what a strategy that samples from its policy needs of the run: the processor, the
        examples, the class names, the params and the tokenizer's pad id."""
        self.examples = examples
        self.processor = processor
        self.classes = list(classes)
        self.cfg = cfg
        self.pad_id = int(processor.tokenizer.pad_token_id)

    def num_examples(self) -> int:
        return len(self.examples)

    def utt_ids(self, indices: list[int]) -> list[str]:
        return [self.examples[i].utt_id for i in indices]
