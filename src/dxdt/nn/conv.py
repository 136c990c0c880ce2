"""A convolutional vector field, so that an ODE block (a :class:`~dxdt.nn.neural_ode.NeuralODE` on feature maps
``(B, C, H, W)``) can replace residual blocks inside a CNN, as in Chen et al. (NeurIPS 2018)'s ODE-Net."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvODEFunc"]


def _groups(channels: int, most: int = 8) -> int:
    """The largest divisor of ``channels`` up to ``most``: GroupNorm needs groups that divide the channels."""
    return max(g for g in range(1, min(most, channels) + 1) if channels % g == 0)


class ConvODEFunc(nn.Module):
    """``dy/dt = f(t, y)`` for feature maps ``y`` of shape ``(B, channels, H, W)``: three 3×3 convolutions.

    conv → GroupNorm → activation, twice, then a last conv back to ``channels``. Padding keeps ``H × W``, so
    the state keeps its shape. With ``time_channel`` every conv also sees ``t`` as one more constant input
    channel (the dynamics may change along the depth ``t``); without it the field is autonomous.

    Args:
        channels: channels of the state (include the zero channels of an augmented ODE block).
        hidden: channels of the two hidden layers.
        time_channel: concatenate ``t`` as an extra input channel to every convolution.
        activation: the nonlinearity, a module (default ``nn.Softplus()``: smooth, so adaptive solvers take
            fewer steps than with ReLU's kinks).

    ``t`` may be 0-d (joint batch mode) or ``(B, 1, 1, 1)`` (per-sample mode).
    """

    def __init__(self, channels: int, hidden: int, time_channel: bool = True, activation: nn.Module | None = None):
        super().__init__()
        for name, value in (("channels", channels), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        extra = int(time_channel)
        self.time_channel = time_channel
        self.conv1 = nn.Conv2d(channels + extra, hidden, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(hidden), hidden)
        self.conv2 = nn.Conv2d(hidden + extra, hidden, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(hidden), hidden)
        self.conv3 = nn.Conv2d(hidden + extra, channels, 3, padding=1)
        self.act = nn.Softplus() if activation is None else activation

    def _conv(self, conv: nn.Conv2d, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.time_channel:
            # ones * t broadcasts a 0-d t and a per-sample (B, 1, 1, 1) t alike
            x = torch.cat([x, torch.ones_like(x[:, :1]) * t], dim=1)
        return conv(x)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 4:
            raise ValueError(f"ConvODEFunc needs feature maps of shape (B, C, H, W); got shape {tuple(y.shape)}")
        h = self.act(self.norm1(self._conv(self.conv1, t, y)))
        h = self.act(self.norm2(self._conv(self.conv2, t, h)))
        return self._conv(self.conv3, t, h)
