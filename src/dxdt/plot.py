"""Matplotlib helpers for :class:`~dxdt.Solution`: states against time, and phase portraits of a batch.

matplotlib is an optional dependency (``pip install dxdt[plot]``); it is imported only when a helper is
called. Without a display (a headless Linux machine, CI) the non-interactive Agg backend is selected, so
``fig.savefig`` works everywhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._solution import Solution

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

__all__ = ["phase_portrait", "plot_solution"]

# Legends with more entries than this are unreadable: left out unless labels are given explicitly.
_MAX_LEGEND = 12


def _pyplot() -> Any:
    """Import ``matplotlib.pyplot``, choosing the Agg backend when there is no display to draw on."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("dxdt.plot needs matplotlib: pip install dxdt[plot]") from None
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    # Respect a backend the user chose (MPLBACKEND, or pyplot already in use).
    if headless and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _trajectories(
    sol: Solution, ts: torch.Tensor | Sequence[float] | None, samples: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Times ``(B', T)`` and flattened states ``(B', T, n)`` as float64 numpy arrays, for the chosen samples.

    With ``ts`` the dense solution is evaluated there; otherwise the saved ``sol.ts`` / ``sol.ys`` are used
    (NaN entries, e.g. the padding of ``SaveAt(steps=True)``, are left for matplotlib to skip).
    """
    if ts is not None:
        ts_t = torch.as_tensor(ts, dtype=torch.float64, device=sol.ys.device)
        ys = sol.evaluate(ts_t)
    else:
        ts_t, ys = sol.ts, sol.ys
    if ys.is_complex():
        raise TypeError("dxdt.plot draws real states; plot sol.ys.real / sol.ys.imag yourself")
    batch = ys.shape[0]
    idx = list(range(batch)) if samples is None else [int(s) for s in samples]
    bad = [s for s in idx if not -batch <= s < batch]
    if bad:
        raise ValueError(f"samples {bad} out of range for a batch of {batch}")
    idx = [s % batch for s in idx]
    y_np = ys.detach().flatten(2).to("cpu", torch.float64).numpy()[idx]
    t_np = ts_t.detach().to("cpu", torch.float64).numpy()
    t_np = np.broadcast_to(t_np, (batch, ys.shape[1]))[idx]
    return t_np, y_np, idx


def _check_component(name: str, value: int, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -n <= value < n:
        raise ValueError(f"{name} must be a state component index in [0, {n}); got {value!r}")
    return int(value) % n


def plot_solution(
    sol: Solution,
    components: int | Sequence[int] | None = None,
    ax: Axes | None = None,
    *,
    samples: Sequence[int] | None = None,
    ts: torch.Tensor | Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    **line_kwargs: Any,
) -> Axes:
    """Plot state components against time, one line per sample and component.

    Args:
        sol: the solution of :func:`dxdt.solve`.
        components: index (or indices) into the flattened state ``y.reshape(B, -1)``; default: all.
        ax: the Axes to draw on; default: a new figure.
        samples: which samples to draw; default: all of them.
        ts: evaluate the dense solution at these times (needs ``saveat=SaveAt(dense=True)``) instead of
            plotting the saved ``sol.ts`` / ``sol.ys``: smooth curves without saving many points.
        labels: one legend label per drawn sample (e.g. ``f"μ = {m:.1f}"``).
        **line_kwargs: passed to ``Axes.plot`` (``linewidth``, ``alpha``, ...).

    Returns:
        The Axes. Each sample gets a colour, each component a line style.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: an index is out of range, or ``labels`` has the wrong length.
    """
    plt = _pyplot()
    t, y, idx = _trajectories(sol, ts, samples)
    n = y.shape[2]
    comps = list(range(n)) if components is None else [components] if isinstance(components, int) else components
    comps = [_check_component("components", c, n) for c in comps]
    if labels is not None and len(labels) != len(idx):
        raise ValueError(f"labels has {len(labels)} entries for {len(idx)} samples")
    if ax is None:
        _, ax = plt.subplots()
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for row, sample in enumerate(idx):
        for k, c in enumerate(comps):
            name = labels[row] if labels is not None else f"sample {sample}"
            label = name if len(comps) == 1 else f"{name}, y[{c}]"
            kwargs = {"color": colors[row % len(colors)], "linestyle": styles[k % len(styles)], **line_kwargs}
            ax.plot(t[row], y[row, :, c], label=label, **kwargs)
    ax.set_xlabel("t")
    ax.set_ylabel(f"y[{comps[0]}]" if len(comps) == 1 else "y")
    if labels is not None or len(idx) * len(comps) <= _MAX_LEGEND:
        ax.legend(fontsize="small")
    return ax


def phase_portrait(
    sol: Solution,
    i: int = 0,
    j: int = 1,
    ax: Axes | None = None,
    color_by: torch.Tensor | Sequence[float] | None = None,
    cmap: str | Colormap = "viridis",
    *,
    samples: Sequence[int] | None = None,
    ts: torch.Tensor | Sequence[float] | None = None,
    colorbar_label: str | None = None,
    mark_start: bool = True,
    **line_kwargs: Any,
) -> Axes:
    """Draw each sample's trajectory in the ``(y_i, y_j)`` plane, coloured by a per-sample value.

    Args:
        sol: the solution of :func:`dxdt.solve`; ``ys`` of shape ``(B, T, *S)``.
        i, j: indices into the flattened state for the horizontal and vertical axes.
        ax: the Axes to draw on; default: a new figure.
        color_by: ``(B,)`` values (e.g. a parameter such as μ) that colour the trajectories through
            ``cmap``, with a colourbar; default: matplotlib's colour cycle, no colourbar.
        cmap: colormap (or its name) for ``color_by``.
        samples: which samples to draw; default: all of them.
        ts: evaluate the dense solution at these times (needs ``saveat=SaveAt(dense=True)``) instead of
            using the saved ``sol.ts`` / ``sol.ys``.
        colorbar_label: label of the colourbar (only with ``color_by``).
        mark_start: mark each trajectory's first point with a dot.
        **line_kwargs: passed to the ``LineCollection`` (``linewidth``, ``alpha``, ...).

    Returns:
        The Axes.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: an index is out of range, or ``color_by`` does not have one value per sample.
    """
    plt = _pyplot()
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    _, y, idx = _trajectories(sol, ts, samples)
    n = y.shape[2]
    i, j = _check_component("i", i, n), _check_component("j", j, n)
    # One polyline per sample; NaN rows (unreached or padded times) are dropped.
    lines = []
    for row in range(len(idx)):
        xy = y[row][:, [i, j]]
        lines.append(xy[np.isfinite(xy).all(axis=1)])
    if ax is None:
        _, ax = plt.subplots()
    kwargs: dict[str, Any] = {"linewidth": 1.0, **line_kwargs}
    collection = LineCollection(lines, **kwargs)
    colors: Any
    if color_by is not None:
        values = torch.as_tensor(color_by).detach().to("cpu", torch.float64).reshape(-1).numpy()
        if values.shape[0] != sol.ys.shape[0]:
            raise ValueError(f"color_by needs one value per sample ({sol.ys.shape[0]}); got {values.shape[0]}")
        values = values[idx]
        norm = Normalize(vmin=float(values.min()), vmax=float(values.max()))
        colormap = matplotlib.colormaps.get_cmap(cmap)
        collection.set_array(values)
        collection.set_cmap(colormap)
        collection.set_norm(norm)
        colors = colormap(norm(values))
    else:
        cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        colors = [cycle[row % len(cycle)] for row in range(len(idx))]
        collection.set_color(colors)
    ax.add_collection(collection)
    if mark_start:
        starts = [line[0] for line in lines if len(line)]
        if starts:
            first = np.array(starts)
            keep = [row for row, line in enumerate(lines) if len(line)]
            ax.scatter(first[:, 0], first[:, 1], s=12, c=[colors[r] for r in keep], zorder=3, edgecolors="none")
    if color_by is not None:
        cbar = ax.figure.colorbar(collection, ax=ax)
        if colorbar_label:
            cbar.set_label(colorbar_label)
    ax.autoscale_view()
    ax.set_xlabel(f"y[{i}]")
    ax.set_ylabel(f"y[{j}]")
    return ax
