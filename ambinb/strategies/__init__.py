"""The training strategies, siblings that never import one another, and the registry that names them.

Each module holds one class following :class:`ambinb.engine.Strategy` (build, ``num_examples``,
``utt_ids``, ``loss`` of one micro-batch, ``summary`` of the training log):

* :mod:`ambinb.strategies.sft`: SFT on the curated CoT with the distribution loss (Eq. 3);
* :mod:`ambinb.strategies.dpo`: on-policy DPO with JS-picked negatives (Eq. 4-5);
* :mod:`ambinb.strategies.grpo`: GRPO with the distribution reward, and GRPO_z (Eq. 6-7).

What they share lives in :mod:`ambinb.strategies.base` (the examples a strategy draws from),
:mod:`ambinb.examples` and :mod:`ambinb.policy` (log-probs, the reference, the slot read-out, the
soft CE). A strategy of ``params/strategies`` is trained by the class of its *family*, the file its
``extends`` chain starts from (:func:`ambinb.config.strategy_family`): ``sft_ce`` and ``sft_nocot``
extend ``sft``, ``dpo_ce`` extends ``dpo``, ``grpo_z`` extends ``grpo``. A new strategy is one class
here, one line in :data:`FAMILIES` and one file in ``params/strategies/``; a variant is a file alone.
"""

from __future__ import annotations

from ambinb import config, engine
from ambinb.strategies.dpo import DPOStrategy
from ambinb.strategies.grpo import GRPOStrategy
from ambinb.strategies.sft import SFTStrategy

FAMILIES: dict[str, type[engine.Strategy]] = {"sft": SFTStrategy, "dpo": DPOStrategy, "grpo": GRPOStrategy}


def strategy_class(name: str) -> type[engine.Strategy]:
    """The class that trains the strategy ``name`` (a file of ``params/strategies``): its family's.

    Example: ``strategy_class("grpo_z")`` -> :class:`~ambinb.strategies.grpo.GRPOStrategy`.

    Raises:
        ValueError: naming the strategy and the families that train (``base`` and ``classical`` train nothing).
    """
    family = config.strategy_family(name)
    if family not in FAMILIES:
        raise ValueError(f"strategy {name!r} (family {family!r}) has no training class: the trainable families are "
                         f"{sorted(FAMILIES)}; a new one is a class in ambinb/strategies/ and a line in "
                         "ambinb.strategies.FAMILIES")
    return FAMILIES[family]
