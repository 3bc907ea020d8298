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
