"""The ``dxdt`` command: fit models to data, simulate them, list them.

    dxdt fit DATA.csv --model sir --time day --observe I=in_bed --population 763 --forecast 7 --plot fit.png
    dxdt simulate --model lorenz --t1 30 --plot lorenz.png --csv lorenz.csv
    dxdt models [NAME]

Exit codes: 0 success; 2 bad input (the message names the file, column or option); 1 the fit did not
converge or a solve failed (with the reason). Nothing is written unless the command succeeds.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: reported with exit code 2."""


class Failed(Exception):
    """The computation did not succeed: exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: exit 2 with the usage line, as usual
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --- parsing helpers ----------------------------------------------------------------------------------


def _pairs(values: Sequence[str] | None, option: str, *, numeric: bool = True) -> dict[str, Any]:
    """``["a=1", "b=2"]`` → ``{"a": 1.0, "b": 2.0}``; a bad item raises :class:`UsageError` naming the option."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"{option} expects NAME=VALUE; got {item!r}")
        if key in out:
            raise UsageError(f"{option}: {key} is given twice")
        if numeric:
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"{option} {item}: {value!r} is not a number") from None
            if not math.isfinite(number):
                raise UsageError(f"{option} {item}: the value must be finite")
            out[key] = number
        else:
            out[key] = value
    return out


def _positive(option: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{option} must be a {'non-negative' if allow_zero else 'positive'} number; got {value:g}")


def _check_output(option: str, file: str | None, suffixes: tuple[str, ...] = ()) -> Path | None:
    """Check before any work that an output file can be written (so that a late failure writes nothing)."""
    if file is None:
        return None
    p = Path(file)
    if p.is_dir():
        raise UsageError(f"{option}: {file} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"{option}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option}: cannot write to the directory {parent}")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(f"{option}: {file} should end in {' or '.join(suffixes)}")
    return p


def _need_matplotlib(option: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{option} needs matplotlib, which is not installed: pip install dxdt[plot]") from None


def _write_atomic(path: Path, write) -> None:
    """Write to a temporary file next to ``path`` and rename it: a failure never leaves a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _model(name: str):
    from .models import MODELS, get_model

    try:
        return get_model(name)
    except ValueError:
        raise UsageError(f"--model: unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def _initial_state(model, init: dict[str, float], population: float | None, option_prefix: str = ""):
    for state, value in init.items():
        if state not in model.states:
            raise UsageError(f"--init: {state!r} is not a state of {model.name} (states: {', '.join(model.states)})")
        if value < 0 and model.nonnegative:
            raise UsageError(f"--init {state}={value:g}: {model.name}'s states are amounts and cannot be negative")
    if population is not None and model.susceptible is None:
        raise UsageError(f"--population is for epidemic models; {model.name} has no susceptible compartment")
    try:
        return model.initial_state(population=population, **init)
    except ValueError as err:
        raise UsageError(f"{'--population/--init' if population is not None else '--init'}: {err}") from None


def _params(model, values: dict[str, float], option: str) -> None:
    for name, value in values.items():
        if name not in model.param_info:
            raise UsageError(
                f"{option}: {model.name} has no parameter {name!r}; its parameters are {', '.join(model.param_info)}"
            )
        if value <= 0:
            raise UsageError(f"{option} {name}={value:g}: parameters are positive")


def _check_solver(name: str) -> None:
    from .solvers import get_solver

    try:
        get_solver(name)
    except ValueError as err:
        raise UsageError(f"--solver: {err}") from None


class _Progress:
    """Reports a long fit's progress on stderr (after the first second, at most twice a second)."""

    def __init__(self, quiet: bool, label: str = "fit"):
        self.quiet, self.label = quiet, label
        self.start = time.perf_counter()
        self.last = self.start

    def __call__(self, iteration: int, objective: float) -> None:
        now = time.perf_counter()
        if self.quiet or now - self.start < 1.0 or now - self.last < 0.5:
            return
        self.last = now
        print(
            f"  {self.label}: iteration {iteration}, objective {objective:.8g} ({now - self.start:.1f} s)",
            file=sys.stderr,
            flush=True,
        )


# --- dxdt fit -----------------------------------------------------------------------------------------


def _resolve_data(file: str) -> str:
    from . import data

    if Path(file).exists():
        return file
    stem = file[:-4] if file.endswith(".csv") else file
    if stem in data.available():
        return str(data.path(stem))
    return file


def _cmd_fit(args: argparse.Namespace) -> int:
    from . import data
    from .fit import fit, get_noise
    from .fit.observe import parse

    # 1. Options, before reading anything.
    model = _model(args.model)
    starting = _pairs(args.param, "--param")
    _params(model, starting, "--param")
    fixed: dict[str, float | None] = {}
    for item in args.fix or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if name not in model.param_info:
            raise UsageError(
                f"--fix: {model.name} has no parameter {name!r}; its parameters are {', '.join(model.param_info)}"
            )
        if sep:
            try:
                fixed[name] = float(value)
            except ValueError:
                raise UsageError(f"--fix {item}: {value!r} is not a number") from None
            if not fixed[name] > 0:
                raise UsageError(f"--fix {item}: parameters are positive")
        else:
            fixed[name] = None
    bounds: dict[str, tuple[float, float]] = {}
    for name, spec in _pairs(args.bound, "--bound", numeric=False).items():
        if name not in model.param_info:
            raise UsageError(f"--bound: {model.name} has no parameter {name!r}")
        lo, sep, hi = spec.partition(":")
        try:
            bounds[name] = (float(lo) if lo else None, float(hi) if hi else None)
        except ValueError:
            raise UsageError(f"--bound {name}={spec}: expected LOWER:UPPER, e.g. {name}=0.1:10") from None
    init = _pairs(args.init, "--init")
    _positive("--population", args.population)
    y0 = _initial_state(model, init, args.population)
    for state in args.estimate_init or []:
        if state not in model.states:
            raise UsageError(
                f"--estimate-init: {state!r} is not a state of {model.name} (states: {', '.join(model.states)})"
            )
        if args.population is not None and state == model.susceptible:
            raise UsageError(f"--estimate-init {state}: with --population, {state} is the rest of the population")
    if not args.observe:
        raise UsageError(
            f"--observe STATE=COLUMN is required: which state (of {', '.join(model.states)}) each data "
            "column measures, e.g. --observe I=cases"
        )
    observe: list[tuple[Any, str]] = []
    for item in args.observe:
        expr, sep, column = item.partition("=")
        if not sep or not expr.strip() or not column.strip():
            raise UsageError(f"--observe expects STATE=COLUMN (e.g. I=in_bed); got {item!r}")
        try:
            obs = parse(expr.strip()).bind(list(model.states))
        except ValueError as err:
            raise UsageError(f"--observe {item}: {err}") from None
        observe.append((obs, column.strip()))
    noise = get_noise(args.noise)
    _positive("--forecast", args.forecast, allow_zero=True)
    if not 0 < args.level < 1:
        raise UsageError(f"--level must be between 0 and 1 (e.g. 0.95); got {args.level:g}")
    _positive("--rtol", args.rtol)
    _positive("--atol", args.atol)
    for option, value, least in (
        ("--starts", args.starts, 1),
        ("--screen", args.screen, 0),
        ("--max-iter", args.max_iter, 1),
        ("--samples", args.samples, 10),
        ("--shooting", args.shooting, 1),
    ):
        if value is not None and value < least:
            raise UsageError(f"{option} must be at least {least}; got {value}")
    if not math.isfinite(args.t0):
        raise UsageError("--t0 must be a finite number")
    _check_solver(args.solver)
    plot_path = _check_output("--plot", args.plot, (".png", ".pdf", ".svg"))
    json_path = _check_output("--json", args.json, (".json",))
    if plot_path is not None:
        _need_matplotlib("--plot")

    # 2. The data.
    file = _resolve_data(args.data)
    try:
        table = data.read_csv(file)
        time_col = args.time or next((c for c in ("time", "t", "day", "days", "date") if c in table.columns), None)
        if time_col is None:
            raise UsageError(
                f"--time: say which column of {args.data} holds the times (columns: {', '.join(table.columns)})"
            )
        if time_col not in table.columns:
            raise UsageError(
                f"--time: {args.data} has no column {time_col!r}; its columns are: {', '.join(table.columns)}"
            )
        for _, column in observe:
            if column not in table.columns:
                raise UsageError(
                    f"--observe: {args.data} has no column {column!r}; its columns are: {', '.join(table.columns)}"
                )
        times = table.column(time_col)
        columns = [table.column(c, allow_missing=True) for _, c in observe]
    except data.DataError as err:
        raise UsageError(str(err)) from None
    lines = table.lines
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            raise UsageError(
                f"{args.data}: column {time_col!r} has the time {float(times[i]):g} twice (lines "
                f"{lines[i - 1]} and {lines[i]}); each time must appear once"
            )
        if times[i] < times[i - 1]:
            raise UsageError(
                f"{args.data}: column {time_col!r} is not increasing: line {lines[i]} has "
                f"{float(times[i]):g} after {float(times[i - 1]):g} on line {lines[i - 1]}; sort the "
                "rows by time"
            )
    if float(times[0]) < args.t0:
        raise UsageError(
            f"{args.data}: the first time {float(times[0]):g} (line {lines[0]}) is before --t0 "
            f"{args.t0:g}; pass --t0 with the time of the initial state"
        )
    for (obs, column), values in zip(observe, columns):
        finite = values[~values.isnan()]
        if finite.numel() == 0:
            raise UsageError(f"{args.data}: column {column!r} has no values")
        if (model.nonnegative and obs.amount) or noise.counts:
            bad = (values < 0).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise UsageError(
                    f"{args.data}, line {lines[i]}, column {column!r}: {float(values[i]):g} is negative; "
                    f"it observes {obs.name}, an amount that cannot be negative"
                )
        if noise.counts:
            bad = ((values != values.round()) & ~values.isnan()).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise UsageError(
                    f"{args.data}, line {lines[i]}, column {column!r}: {float(values[i]):g} is not a "
                    f"count; --noise {args.noise} needs whole numbers (use --noise gaussian)"
                )
        if noise.name == "lognormal":
            bad = (values <= 0).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise UsageError(
                    f"{args.data}, line {lines[i]}, column {column!r}: {float(values[i]):g} is not "
                    "positive; --noise lognormal needs positive values"
                )
    import torch

    data_t = torch.stack(columns, dim=1)

    # 3. Fit.
    quiet = args.quiet
    out = sys.stdout
    if not quiet:
        where = Path(file).name
        state0 = ", ".join(f"{s}={float(v):g}" for s, v in zip(model.states, y0[0]))
        print(
            f"dxdt fit: {model.name} on {where} ({len(times)} observations of "
            f"{', '.join(f'{o.name}={c}' for o, c in observe)}); initial state at t0={args.t0:g}: {state0}",
            file=out,
        )
        print(f"noise model: {noise.label}; solver {args.solver} (rtol={args.rtol:g}, atol={args.atol:g})", file=out)
    progress = _Progress(quiet)
    try:
        result = fit(
            model,
            times,
            data_t,
            observe=[o for o, _ in observe],
            y0=init,
            population=args.population if model.susceptible is not None else None,
            t0=args.t0,
            params=starting or None,
            fixed=fixed,
            bounds=bounds or None,
            estimate_initial=args.estimate_init or (),
            noise=noise,
            optimizer=args.optimizer,
            n_starts=args.starts,
            screen="auto" if args.screen is None else args.screen,
            seed=args.seed,
            shooting=args.shooting,
            solver=args.solver,
            rtol=args.rtol,
            atol=args.atol,
            max_iter=args.max_iter,
            level=args.level,
            profile=not args.no_profile,  # in the batch of the fit's final solve
            callback=progress,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not result.converged:
        print(result.summary(), file=out)
        raise Failed(
            f"the fit did not converge: {result.message}. Try --starts 8, --screen 256, --max-iter, "
            "starting values with --param, or another --noise model. Nothing was written."
        )
    forecast = None
    if args.forecast is not None or plot_path is not None:  # the plot shows bands even without a forecast
        from .fit.observe import Incidence

        smooth = plot_path is not None and not any(isinstance(o, Incidence) for o, _ in observe)
        forecast = result.forecast(
            args.forecast or 0.0,
            n_samples=args.samples,
            level=args.level,
            seed=args.seed,
            resolution=4 if smooth else 1,
        )
        _clip_amounts(forecast, model, result)

    # 4. Report and write.
    if not quiet:
        print("", file=out)
        print(result.summary(), file=out)
        if args.forecast and forecast is not None and bool(forecast.future.any()):
            what = (
                "parameter uncertainty and observation noise" if forecast.parameter_uncertainty else "observation noise"
            )
            print(
                f"\nforecast, {args.forecast:g} {model.time_unit}s past the last observation "
                f"({forecast.n_samples} draws; prediction intervals include {what}):",
                file=out,
            )
            print(forecast.table(), file=out)
    if json_path is not None:
        payload = {
            "model": model.name,
            "data": str(args.data),
            "time_column": time_col,
            "observe": {o.name: c for o, c in observe},
            "t0": args.t0,
            "initial_state": dict(zip(model.states, y0[0].tolist())),
            **result.to_dict(),
        }
        if args.forecast is not None and forecast is not None:
            payload["forecast"] = forecast.to_dict()
        from .fit.result import _finite

        _write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(_finite(payload), indent=2)))
        if not quiet:
            print(f"\nwrote {json_path}", file=out)
    if plot_path is not None:
        from .fit.plot import plot_fit

        fig = plot_fit(result, forecast, time_label=time_col, labels=[f"{o.name} ({c})" for o, c in observe])
        _write_atomic(plot_path, lambda tmp: fig.savefig(tmp, dpi=120, format=plot_path.suffix[1:]))
        if not quiet:
            print(f"wrote {plot_path}", file=out)
    return EXIT_OK


def _clip_amounts(forecast, model, result) -> None:
    """Observations of amounts cannot be negative: truncate the prediction intervals at zero."""
    for k, obs in enumerate(result.problem.observations):
        if model.nonnegative and obs.amount:
            forecast.lower[:, k] = forecast.lower[:, k].clamp_min(0)
            forecast.mean_lower[:, k] = forecast.mean_lower[:, k].clamp_min(0)


# --- dxdt simulate ------------------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    import torch

    import dxdt

    model = _model(args.model)
    values = _pairs(args.param, "--param")
    _params(model, values, "--param")
    model.set_params(**values)
    _positive("--population", args.population)
    y0 = _initial_state(model, _pairs(args.init, "--init"), args.population)
    if not math.isfinite(args.t0) or not math.isfinite(args.t1):
        raise UsageError("--t0 and --t1 must be finite numbers")
    if not args.t1 > args.t0:
        raise UsageError(f"--t1 must be after --t0; got t0={args.t0:g}, t1={args.t1:g}")
    if args.points < 2:
        raise UsageError(f"--points must be at least 2; got {args.points}")
    _positive("--rtol", args.rtol)
    _positive("--atol", args.atol)
    _check_solver(args.solver)
    plot_path = _check_output("--plot", args.plot, (".png", ".pdf", ".svg"))
    csv_path = _check_output("--csv", args.csv, (".csv",))
    if plot_path is not None:
        _need_matplotlib("--plot")
    ts = torch.linspace(args.t0, args.t1, args.points, dtype=torch.float64)
    start = time.perf_counter()
    with torch.no_grad():
        sol = dxdt.solve(
            model,
            y0,
            args.t0,
            args.t1,
            saveat=ts,
            solver=args.solver,
            rtol=args.rtol,
            atol=args.atol,
            max_steps=args.max_steps,
            throw=False,
        )
    elapsed = time.perf_counter() - start
    if not bool(sol.success.all()):
        from dxdt import Status

        status = Status(int(sol.status[0]))
        hint = " (the model is stiff: use a stiff --solver)" if model.stiff else ""
        raise Failed(
            f"the solve stopped at t = {float(sol.t_final[0]):.6g}: {status.message}{hint}. Nothing was written."
        )
    ys = sol.ys[0]
    if not args.quiet:
        params = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in model.params.items())
        print(
            f"dxdt simulate: {model.name} ({params}), t = {args.t0:g} .. {args.t1:g}; {sol.describe()}; {elapsed:.3f} s"
        )
        rows = sorted(set(torch.linspace(0, args.points - 1, min(args.points, 11)).round().long().tolist()))
        width = max(12, *(len(s) + 2 for s in model.states))
        print(f"{'t':>10}" + "".join(f"{s:>{width}}" for s in model.states))
        for i in rows:
            print(f"{float(ts[i]):>10.4g}" + "".join(f"{float(v):>{width}.6g}" for v in ys[i]))
    if csv_path is not None:

        def write_csv(tmp: str) -> None:
            with open(tmp, "w") as fh:
                fh.write(
                    f"# dxdt simulate --model {model.name} "
                    + " ".join(f"--param {k}={float(v.detach()):.10g}" for k, v in model.params.items())
                    + "\n"
                )
                fh.write(",".join(["t", *model.states]) + "\n")
                for i in range(ys.shape[0]):
                    fh.write(",".join([f"{float(ts[i]):.10g}", *(f"{float(v):.10g}" for v in ys[i])]) + "\n")

        _write_atomic(csv_path, write_csv)
        if not args.quiet:
            print(f"wrote {csv_path}")
    if plot_path is not None:
        from .plot import _pyplot

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for i, s in enumerate(model.states):
            ax.plot(ts.numpy(), ys[:, i].numpy(), label=s)
        ax.set_xlabel(f"t ({model.time_unit})")
        ax.set_title(model.title, fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _write_atomic(plot_path, lambda tmp: fig.savefig(tmp, dpi=120, format=plot_path.suffix[1:]))
        if not args.quiet:
            print(f"wrote {plot_path}")
    return EXIT_OK


# --- dxdt models --------------------------------------------------------------------------------------


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    if args.name:
        print(_model(args.name).describe())
        return EXIT_OK
    width = max(len(n) for n in MODELS)
    for name, cls in MODELS.items():
        params = ", ".join(f"{p}={info.default:g}" for p, info in cls.param_info.items())
        print(f"{name:<{width}}  {cls.title}")
        print(f"{'':<{width}}  states {', '.join(cls.states)}; parameters {params}")
    print("\n`dxdt models NAME` shows a model's equations and the meaning and unit of each parameter.")
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------------


@functools.cache  # built once per process: argparse's gettext lookups make a build cost ~2.5 ms
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .fit.noise import NOISE_MODELS
    from .models import MODELS

    parser = _Parser(prog="dxdt", description="Differential-equation models: fit them to data, simulate them.")
    parser.add_argument("--version", action="version", version=f"dxdt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    f = sub.add_parser(
        "fit",
        help="fit a model to a CSV file, with intervals and forecasts",
        description="Fit a model's parameters to the columns of a CSV file (lines starting with # are "
        "comments). DATA may also name a bundled data set, e.g. "
        "boarding_school_influenza_1978.",
    )
    f.add_argument("data", metavar="DATA.csv")
    f.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    f.add_argument("--time", help="the column of times (default: a column named time, t, day or days)")
    f.add_argument(
        "--observe",
        action="append",
        metavar="STATE=COLUMN",
        help="what a column measures: a state (I=cases), a sum (I+R=col), a scaled state (0.5*I=col), "
        "incidence=col or cumulative=col; repeat for several columns",
    )
    f.add_argument(
        "--population",
        type=float,
        metavar="N",
        help="epidemic models: total population; S0 = N minus the other initial compartments",
    )
    f.add_argument(
        "--init",
        action="append",
        metavar="STATE=VALUE",
        help="initial state values (default: the model's; with --population the infected seed is 1)",
    )
    f.add_argument("--t0", type=float, default=0.0, help="time of the initial state (default 0)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE", help="starting value of a parameter")
    f.add_argument("--fix", action="append", metavar="NAME[=VALUE]", help="hold a parameter fixed")
    f.add_argument("--bound", action="append", metavar="NAME=LO:HI", help="bounds for a parameter")
    f.add_argument("--estimate-init", action="append", metavar="STATE", help="estimate this initial state too")
    f.add_argument(
        "--noise",
        default="gaussian",
        choices=list(NOISE_MODELS),
        help="observation noise (default gaussian, i.e. least squares)",
    )
    f.add_argument(
        "--optimizer",
        default="lm",
        choices=["lm", "lbfgs", "adam"],
        help="lm: Levenberg-Marquardt (default); lbfgs; adam",
    )
    f.add_argument("--starts", type=int, default=1, help="optimizations from different starts (default 1)")
    f.add_argument(
        "--screen",
        type=int,
        default=None,
        help="quasi-random candidates screened in one batched solve to pick the start "
        "(default: 16 per estimated unknown, at least 32)",
    )
    f.add_argument("--shooting", type=int, default=1, metavar="K", help="multiple shooting with K segments")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--solver", default="tsit5", help="ODE method (default tsit5)")
    f.add_argument("--rtol", type=float, default=1e-6)
    f.add_argument("--atol", type=float, default=1e-6)
    f.add_argument("--max-iter", type=int, default=None, help="iteration limit of the optimizer")
    f.add_argument("--level", type=float, default=0.95, help="coverage of intervals and bands (default 0.95)")
    f.add_argument("--no-profile", action="store_true", help="skip the profile-likelihood intervals")
    f.add_argument("--forecast", type=float, metavar="T", help="forecast T time units past the last observation")
    f.add_argument("--samples", type=int, default=1000, help="parameter draws behind the forecast bands")
    f.add_argument("--plot", metavar="OUT.png", help="plot data, fit and forecast bands (needs matplotlib)")
    f.add_argument("--json", metavar="OUT.json", help="write estimates, intervals and forecast as JSON")
    f.add_argument("--quiet", "-q", action="store_true", help="print nothing (exit code only)")
    f.set_defaults(handler=_cmd_fit)

    s = sub.add_parser("simulate", help="solve a model and print, save or plot the trajectory")
    s.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    s.add_argument("--param", action="append", metavar="NAME=VALUE", help="parameter values")
    s.add_argument("--init", action="append", metavar="STATE=VALUE", help="initial state values")
    s.add_argument("--population", type=float, metavar="N", help="epidemic models: total population")
    s.add_argument("--t0", type=float, default=0.0)
    s.add_argument("--t1", type=float, required=True, help="end time")
    s.add_argument("--points", type=int, default=201, help="number of output times (default 201)")
    s.add_argument("--solver", default="tsit5")
    s.add_argument("--rtol", type=float, default=1e-8)
    s.add_argument("--atol", type=float, default=1e-8)
    s.add_argument("--max-steps", type=int, default=100_000)
    s.add_argument("--plot", metavar="OUT.png")
    s.add_argument("--csv", metavar="OUT.csv")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(handler=_cmd_simulate)

    m = sub.add_parser("models", help="list the models with their equations and parameters")
    m.add_argument("name", nargs="?", help="show one model in full")
    m.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dxdt`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse: --help, --version (0) or a usage error (2, message printed)
        return int(done.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"dxdt {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as err:
        print(f"dxdt {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
