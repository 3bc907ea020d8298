"""The training strategies, siblings that never import one another.

Each module holds one class following :class:`ambinb.engine.Strategy` (build, ``num_examples``,
``utt_ids``, ``loss`` of one micro-batch, ``summary`` of the training log):

* :mod:`ambinb.strategies.sft`: SFT on the curated CoT with the distribution loss (Eq. 3);
* :mod:`ambinb.strategies.dpo`: on-policy DPO with JS-picked negatives (Eq. 4-5);
* :mod:`ambinb.strategies.grpo`: GRPO with the distribution reward, and GRPO_z (Eq. 6-7).

What they share lives in :mod:`ambinb.run` (the example type, the run every strategy makes, the
name -> class registry) and :mod:`ambinb.policy` (log-probs, the reference, the slot read-out, the
soft CE).
"""

from __future__ import annotations

from typing import Any


class ExampleStrategy:
    """What every strategy does alike: it trains on ``self.examples`` (:class:`ambinb.run.Example`),
    drawn by index, and is built from one run's model, processor, examples, classes and params."""

    examples: list[Any]

    @classmethod
    def build(cls, model: Any, processor: Any, examples: list[Any], classes: list[str],
              cfg: dict[str, Any]) -> ExampleStrategy:
        """The strategy of one run (:class:`ambinb.engine.Strategy`)."""
        return cls(model, processor, examples, classes, cfg)

    def hold_run(self, processor: Any, examples: list[Any], classes: list[str], cfg: dict[str, Any]) -> None:
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
