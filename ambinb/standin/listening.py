"""Pretraining task: listening. A linear head on the audio tower's output, pooled over the clip (mean
and standard deviation), predicts what the curator measures in the recording: its 88 eGeMAPS
functionals (squared error) and the three-way bin of each of the six prosody dimensions
(cross-entropy). It gives the tower, trained in this stage only, a dense signal to learn to hear,
as Qwen2-Audio's tower comes from supervised speech pretraining. The head is dropped afterwards."""

from __future__ import annotations

import numpy as np
import torch

from ambinb import prosody

N_BINS = 3  # below the reference, close to it (|z| < prosody.NEAR), above it


def bins(z: np.ndarray) -> np.ndarray:
    """:func:`ambinb.prosody.bins` of finite z-scores as class indices: 0 below ``-NEAR``, 1 within
    ``NEAR`` of 0, 2 above ``NEAR``.

    Example: ``bins(np.array([-0.7, 0.2, 0.5]))`` -> ``[0, 1, 2]``.
    """
    return (prosody.bins(np.asarray(z, dtype=np.float64)) + 1).astype(np.int64)


def pooled(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Mean and standard deviation over time of each clip's tower output: (B, 2 * d_audio)."""
    return torch.stack([torch.cat([o.mean(0), o.std(0, unbiased=False)]) for o in outputs])


class ListeningHead(torch.nn.Module):
    """Linear map from :func:`pooled` tower outputs to ``n_functionals`` values and ``n_dims`` x 3 bin logits."""

    def __init__(self, d_audio: int, n_functionals: int, n_dims: int) -> None:
        super().__init__()
        self.n_functionals, self.n_dims = n_functionals, n_dims
        self.linear = torch.nn.Linear(2 * d_audio, n_functionals + n_dims * N_BINS)

    def forward(self, outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(functionals (B, F), bin logits (B, D, 3))``."""
        out = self.linear(pooled(outputs))
        return out[:, : self.n_functionals], out[:, self.n_functionals:].reshape(-1, self.n_dims, N_BINS)


def listening_loss(head: ListeningHead, outputs: list[torch.Tensor], functionals: torch.Tensor,
                   dim_bins: torch.Tensor, mse_weight: float = 0.5) -> torch.Tensor:
    """Mean cross-entropy of the bins (B, D) plus ``mse_weight`` times the functionals' (B, F) mean squared error."""
    pred, logits = head(outputs)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, N_BINS), dim_bins.reshape(-1))
    return ce + mse_weight * torch.nn.functional.mse_loss(pred, functionals)
