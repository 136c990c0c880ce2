"""Plot a fit: data, the fitted curve, and forecast bands (matplotlib, imported only when called)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .observe import Incidence
from .result import FitResult, Forecast, _g

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_fit"]


def _pyplot() -> Any:
    try:
        from ..plot import _pyplot as pyplot
    except ImportError:  # pragma: no cover - dxdt.plot is part of the package
        raise ImportError("plotting needs matplotlib: pip install dxdt[plot]") from None
    return pyplot()


def plot_fit(
    result: FitResult,
    forecast: Forecast | None = None,
    *,
    title: str | None = None,
    time_label: str = "time",
    labels: list[str] | None = None,
) -> Figure:
    """A figure with one panel per observed series: data, fit, and (with ``forecast``) its bands.

    ``labels`` names the panels' vertical axes (default: the observations, e.g. ``I``).

    The band of the mean (parameter uncertainty) is drawn darker, the prediction interval for new
    observations (parameter uncertainty and observation noise) lighter.

    Raises:
        ImportError: matplotlib is not installed.
    """
    plt = _pyplot()
    k_obs = len(result.observed)
    fig, axes = plt.subplots(k_obs, 1, figsize=(7.5, 3.6 * k_obs + 0.4), squeeze=False, sharex=True)
    times = result.times
    t_end = float(forecast.times[-1]) if forecast is not None else float(times[-1])
    seg = result.problem.segments
    t_start = float(seg.t0[-1]) if seg.n > 1 else result.problem.t0
    smooth = not any(isinstance(o, Incidence) for o in result.problem.observations)
    if smooth:  # point observations: draw the model on a fine grid
        grid = torch.linspace(t_start, t_end, 400, dtype=torch.float64)[1:]
        curve = result.predict(grid)
    else:  # interval observations (incidence) only make sense on the observation grid
        grid = forecast.times if forecast is not None else times
        curve = forecast.mean if forecast is not None else result.fitted
    pct = f"{100 * (forecast.level if forecast else result.level):g}%"
    for k, name in enumerate(result.observed):
        ax = axes[k, 0]
        if forecast is not None:
            ft = forecast.times.numpy()
            ax.fill_between(
                ft,
                forecast.lower[:, k].numpy(),
                forecast.upper[:, k].numpy(),
                color="C0",
                alpha=0.15,
                lw=0,
                label=f"{pct} prediction interval",
            )
            ax.fill_between(
                ft,
                forecast.mean_lower[:, k].numpy(),
                forecast.mean_upper[:, k].numpy(),
                color="C0",
                alpha=0.35,
                lw=0,
                label=f"{pct} band of the mean",
            )
            ax.axvline(float(times[-1]), color="0.5", lw=0.8, ls=":")
        ax.plot(
            grid.numpy(), curve[:, k].numpy(), color="C0", lw=2, label="fit" if forecast is None else "fit and forecast"
        )
        ax.plot(times.numpy(), result.data[:, k].numpy(), "o", color="k", ms=4.5, label="data", zorder=3)
        ax.set_ylabel(labels[k] if labels else name)
        ax.legend(fontsize="small", loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(time_label)
    if title is None:
        parts = [
            f"{n} = {_g(e.value, 4)} [{_g(e.lower, 3)}, {_g(e.upper, 3)}]"
            for n, e in list(result.params.items())[:3] + list(result.derived.items())[:1]
        ]
        title = ", ".join(parts)
    axes[0, 0].set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig
