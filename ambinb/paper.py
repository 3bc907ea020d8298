"""The paper's reported numbers (its Table 2 and Table 3), for side-by-side display only.

Values are (JS, BC, R2, Brier) as printed in the paper; nothing in ambinb is tuned towards them.
"""

from __future__ import annotations

import pandas as pd

METRICS = ("js", "bc", "r2", "brier")

# (dataset, strategy) -> (JS, BC, R2, Brier); "audio_reasoner" is the paper's other baseline.
TABLE2 = {
    ("iemocap", "base"): (0.40, 0.64, 0.51, 0.15),
    ("iemocap", "audio_reasoner"): (0.36, 0.67, 0.52, 0.15),
    ("iemocap", "sft"): (0.29, 0.73, 0.60, 0.12),
    ("iemocap", "dpo"): (0.23, 0.79, 0.65, 0.09),
    ("iemocap", "grpo"): (0.36, 0.67, 0.55, 0.13),
    ("iemocap", "grpo_z"): (0.20, 0.82, 0.67, 0.07),
    ("crema_d", "base"): (0.25, 0.78, 0.54, 0.05),
    ("crema_d", "audio_reasoner"): (0.37, 0.69, 0.51, 0.09),
    ("crema_d", "sft"): (0.21, 0.82, 0.57, 0.04),
    ("crema_d", "dpo"): (0.17, 0.86, 0.67, 0.03),
    ("crema_d", "grpo"): (0.25, 0.77, 0.46, 0.04),
    ("crema_d", "grpo_z"): (0.20, 0.82, 0.68, 0.04),
}

# SFT trained on CREMA-D: (test setting, variant) -> (JS, BC, R2, Brier)
TABLE3 = {
    ("in-domain (CREMA-D)", "sft"): (0.21, 0.82, 0.57, 0.04),
    ("in-domain (CREMA-D)", "sft_nocot"): (0.22, 0.81, 0.57, 0.04),
    ("cross-domain (IEMOCAP)", "sft"): (0.38, 0.65, 0.50, 0.15),
    ("cross-domain (IEMOCAP)", "sft_nocot"): (0.52, 0.52, 0.31, 0.22),
}


def table2() -> pd.DataFrame:
    """The paper's Table 2 as a DataFrame indexed by (dataset, strategy)."""
    df = pd.DataFrame.from_dict(TABLE2, orient="index", columns=list(METRICS))
    df.index = pd.MultiIndex.from_tuples(df.index, names=["dataset", "strategy"])
    return df
