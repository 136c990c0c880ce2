"""Bad input fails loudly and early (DESIGN §2.5): ``ValueError``/``TypeError`` before any stepping, with a
message that names the argument, the value received and the fix.

Every case counts the calls of ``f``: zero where the check needs no evaluation, at most one (the
shape/dtype check on ``f(t0, y0)``) where it does.
"""

from __future__ import annotations

import math

import pytest
import torch

import dxdt
from dxdt import SaveAt

F64 = torch.float64


class CountingField:
    """``f(t, y) = -y`` (or ``out(y)`` when given), counting calls."""

    def __init__(self, out=None):
        self.out = out
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -y if self.out is None else self.out(y)


def y0_ok() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=F64)


def call(f=None, y0=None, t0=0.0, t1=1.0, **kwargs):
    f = CountingField() if f is None else f
    dxdt.solve(f, y0_ok() if y0 is None else y0, t0, t1, **kwargs)
    return f


# (id, solve kwargs, exception, message regex). Each regex names the argument, the value and the fix.
CASES = [
    # --- save times ---
    (
        "ts-repeated",
        dict(saveat=torch.tensor([0.0, 0.5, 0.5, 1.0])),
        ValueError,
        r"saveat ts must be strictly increasing.*\[0\.0, 0\.5, 0\.5, 1\.0\].*Sort them and drop duplicates",
    ),
    (
        "ts-decreasing",
        dict(saveat=torch.tensor([0.0, 0.7, 0.3], dtype=F64)),
        ValueError,
        r"saveat ts must be strictly increasing.*0\.7, 0\.3.*Sort them",
    ),
    (
        "ts-increasing-backwards",
        dict(t0=1.0, t1=0.0, saveat=torch.tensor([0.2, 0.8], dtype=F64)),
        ValueError,
        r"saveat ts must be strictly decreasing \(t1 < t0\).*\[0\.2, 0\.8\].*Sort them",
    ),
    (
        "ts-after-t1",
        dict(saveat=torch.tensor([0.0, 1.5])),
        ValueError,
        r"saveat ts\[0, 1\] = 1\.5 lies outside \[t0, t1\] = \[0\.0, 1\.0\].*inside the interval",
    ),
    (
        "ts-before-t0-per-sample",
        dict(t0=torch.tensor([0.0, 0.5]), saveat=torch.tensor([[0.1, 0.9], [0.4, 0.9]], dtype=F64)),
        ValueError,
        r"saveat ts\[1, 0\] = 0\.4 lies outside \[t0, t1\] = \[0\.5, 1\.0\]",
    ),
    (
        "ts-nan",
        dict(saveat=torch.tensor([0.1, math.nan])),
        ValueError,
        r"saveat ts contains NaN or inf: \[nan",
    ),
    (
        "ts-wrong-batch",
        dict(saveat=torch.zeros(3, 4)),
        ValueError,
        r"saveat ts must have shape \(T,\) \(shared\) or \(B, T\) = \(2, T\) \(per sample\); got \(3, 4\)",
    ),
    ("ts-empty", dict(saveat=torch.zeros(0)), ValueError, r"saveat ts is empty: give at least one save time"),
    (
        "ts-per-sample-in-joint-mode",
        dict(batch_mode="joint", saveat=torch.zeros(2, 3)),
        ValueError,
        r"in joint mode save times are shared: ts must have shape \(T,\), got \(2, 3\)",
    ),
    ("saveat-type", dict(saveat="t1"), TypeError, r"saveat must be a SaveAt.*got str.*saveat=torch\.linspace"),
    # --- tolerances ---
    ("rtol-negative", dict(rtol=-1e-6), ValueError, r"rtol must be non-negative and finite; got -1e-06"),
    ("rtol-nan", dict(rtol=math.nan), ValueError, r"rtol must be non-negative and finite; got nan"),
    ("rtol-inf", dict(rtol=math.inf), ValueError, r"rtol must be non-negative and finite; got inf"),
    ("atol-negative", dict(atol=-1.0), ValueError, r"atol must be positive and finite; got -1\.0"),
    ("atol-inf", dict(atol=math.inf), ValueError, r"atol must be positive and finite; got inf"),
    (
        "atol-zero",
        dict(atol=0.0),
        ValueError,
        r"atol must be positive and finite; got 0\.0 \(a zero atol divides by zero.*such as 1e-12\)",
    ),
    (
        "atol-zero-component",
        dict(atol=torch.tensor([1e-9, 0.0])),
        ValueError,
        r"atol must be positive and finite; got 0\.0",
    ),
    (
        "rtol-shape",
        dict(rtol=torch.ones(3)),
        ValueError,
        r"rtol of shape \(3,\) does not broadcast to y0's shape \(2, 2\)",
    ),
    ("rtol-type", dict(rtol="1e-6"), TypeError, r"rtol must be a number or a tensor broadcastable to y0; got str"),
    # --- times ---
    ("t0-nan", dict(t0=math.nan), ValueError, r"t0 must be finite; got \[?nan"),
    ("t1-inf", dict(t1=math.inf), ValueError, r"t1 must be finite; got \[?inf"),
    ("t1-per-sample-nan", dict(t1=torch.tensor([1.0, math.nan])), ValueError, r"t1 must be finite; got \[1\.0, nan\]"),
    ("t0-type", dict(t0="0"), TypeError, r"t0 must be a number or a tensor; got str"),
    ("t0-bool", dict(t0=True), TypeError, r"t0 must be a number or a tensor; got bool"),
    (
        "t1-wrong-batch",
        dict(t1=torch.ones(3)),
        ValueError,
        r"t1 must be a scalar or a \(2,\) tensor \(one per sample\); got shape \(3,\)",
    ),
    (
        "t0-requires-grad",
        dict(t0=torch.tensor(0.0, dtype=F64, requires_grad=True)),
        ValueError,
        r"t0 requires grad.*pass t0\.detach\(\)",
    ),
    # --- solver, steps, controller, mode ---
    ("solver-unknown", dict(solver="rk5"), ValueError, r"unknown solver 'rk5': choose one of .*tsit5"),
    ("solver-type", dict(solver=4), ValueError, r"unknown solver 4: choose one of"),
    (
        "fixed-step-without-dt0",
        dict(solver="rk4"),
        ValueError,
        r"RK4\(\) is a fixed-step method and needs a step size: pass dt0=\.\.\. \(or use an adaptive method",
    ),
    ("dt0-zero", dict(dt0=0.0), ValueError, r"dt0 must be a positive finite number .*; got 0\.0"),
    (
        "dt0-negative",
        dict(dt0=-0.1),
        ValueError,
        r"dt0 must be a positive finite number \(its sign is taken.*got -0\.1",
    ),
    ("dt0-negative-fixed", dict(solver="euler", dt0=-0.1), ValueError, r"dt0 must be a positive finite number.*-0\.1"),
    ("dt0-nan", dict(dt0=math.nan), ValueError, r"dt0 must be a positive finite number.*got nan"),
    ("dt0-inf", dict(dt0=math.inf), ValueError, r"dt0 must be a positive finite number.*got inf"),
    ("max-steps-zero", dict(max_steps=0), ValueError, r"max_steps must be a positive int; got 0"),
    ("max-steps-negative", dict(max_steps=-1), ValueError, r"max_steps must be a positive int; got -1"),
    ("max-steps-float", dict(max_steps=2.5), (ValueError, TypeError), r"max_steps must be a positive int; got 2\.5"),
    ("max-steps-bool", dict(max_steps=True), (ValueError, TypeError), r"max_steps must be a positive int; got True"),
    ("dt-min-negative", dict(dt_min=-1.0), ValueError, r"dt_min must be a non-negative number; got -1\.0"),
    (
        "dt-min-above-dt-max",
        dict(dt_min=0.5, dt_max=0.1),
        ValueError,
        r"dt_min must be smaller than dt_max; got dt_min=0\.5, dt_max=0\.1",
    ),
    ("controller-unknown", dict(controller="pid"), ValueError, r"controller must be 'pi', 'i' or an Abstract.*'pid'"),
    ("batch-mode", dict(batch_mode="batch"), ValueError, r"batch_mode must be 'per_sample' or 'joint'; got 'batch'"),
    (
        "compile-esdirk",
        dict(solver="kvaerno5", compile=True),
        ValueError,
        r"compile=True compiles explicit Runge-Kutta, Rosenbrock and automatic-switching steps; Kvaerno5\(\) "
        r"decides Newton convergence on the host",
    ),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_fails_before_any_work(kwargs, exc, match):
    f = CountingField()
    with pytest.raises(exc, match=match):
        call(f, **kwargs)
    assert f.calls == 0


@pytest.mark.parametrize("mode", ["per_sample", "joint"])
@pytest.mark.parametrize("dt0", [None, 0.1])
def test_f_output_shape_mismatch(mode, dt0):
    f = CountingField(lambda y: -y[..., :1])
    match = r"f returned shape \(2, 1\) but y0 has shape \(2, 2\): f\(t, y\) must return dy/dt with y's shape"
    with pytest.raises(ValueError, match=match):
        call(f, batch_mode=mode, dt0=dt0)
    assert f.calls == 1


@pytest.mark.parametrize("mode", ["per_sample", "joint"])
def test_f_output_dtype_mismatch(mode):
    f = CountingField(lambda y: -y.float())
    match = r"f returned dtype torch\.float32 but y0 has dtype torch\.float64: make f compute in y's dtype"
    with pytest.raises(ValueError, match=match):
        call(f, batch_mode=mode)
    assert f.calls == 1


def test_f_returns_a_non_tensor():
    f = CountingField(lambda y: y.tolist())
    with pytest.raises(TypeError, match=r"f must return a torch\.Tensor of shape \(2, 2\); it returned list"):
        call(f)
    assert f.calls == 1


def test_f_not_callable():
    with pytest.raises(TypeError, match=r"f must be callable as f\(t, y\) or f\(t, y, args\); got int"):
        dxdt.solve(3, y0_ok(), 0.0, 1.0)


def test_args_given_to_f_of_t_y():
    f = CountingField()
    with pytest.raises(TypeError, match=r"args was given but f takes only \(t, y\): give f a third parameter"):
        call(f, args=torch.ones(2))
    assert f.calls == 0


def test_args_given_to_a_module_whose_forward_takes_t_y():
    """An nn.Module's own signature is (*args, **kwargs): its forward's is what counts."""

    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -y

    with pytest.raises(TypeError, match=r"args was given but f takes only \(t, y\): give f a third parameter"):
        call(Decay(), args=torch.ones(2))


def test_f_with_wrong_arity():
    with pytest.raises(TypeError, match=r"f must take \(t, y\) or \(t, y, args\); got a callable with signature"):
        dxdt.solve(lambda y: -y, y0_ok(), 0.0, 1.0)


@pytest.mark.parametrize(
    ("y0", "exc", "match"),
    [
        (
            torch.ones(3, dtype=F64),
            ValueError,
            r"y0 must have shape \(B, \*S\).*got shape \(3,\)\. For a single system use y0\[None\]; "
            r"for a batch of scalar ODEs use y0\[:, None\]",
        ),
        (torch.tensor(1.0, dtype=F64), ValueError, r"y0 must have shape \(B, \*S\).*got shape \(\)"),
        (torch.ones(0, 2, dtype=F64), ValueError, r"y0 has an empty batch \(shape\[0\] == 0\)"),
        (
            torch.ones(2, 2, dtype=torch.long),
            TypeError,
            r"y0 must have a floating dtype; got torch\.int64.*y0\.double\(\)",
        ),
        ([[1.0, 2.0]], TypeError, r"y0 must be a torch\.Tensor of shape \(B, \*S\); got list"),
        (
            torch.tensor([[1.0, 2.0], [math.nan, 0.0], [0.0, math.inf]], dtype=F64),
            ValueError,
            r"y0 contains NaN or inf \(samples \[1, 2\]\): every initial state must be finite",
        ),
    ],
    ids=["ndim1", "ndim0", "empty-batch", "integer", "list", "nan-inf"],
)
def test_bad_y0(y0, exc, match):
    f = CountingField()
    with pytest.raises(exc, match=match):
        call(f, y0=y0)
    assert f.calls == 0


def test_saveat_ts_and_steps_together():
    with pytest.raises(ValueError, match=r"SaveAt: give either ts or steps=True, not both"):
        SaveAt(ts=torch.tensor([0.5]), steps=True)


def test_joint_mode_with_per_sample_interval_names_the_values():
    f = CountingField()
    with pytest.raises(ValueError, match=r"in joint mode the batch shares one interval: t0 and t1 must be scalars"):
        call(f, t0=torch.tensor([0.0, 0.5]), batch_mode="joint")
    assert f.calls == 0


def test_joint_mode_interval_error_shows_the_value():
    with pytest.raises(ValueError, match=r"t0.*\[0\.0, 0\.5\]"):
        call(t0=torch.tensor([0.0, 0.5]), batch_mode="joint")


def test_evaluate_without_dense_output():
    sol = dxdt.solve(lambda t, y: -y, y0_ok(), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"Solution\.evaluate needs dense output: pass saveat=SaveAt\(dense=True\)"):
        sol.evaluate(0.5)


def test_evaluate_outside_the_interval():
    sol = dxdt.solve(lambda t, y: -y, y0_ok(), 0.0, 1.0, saveat=SaveAt(dense=True))
    with pytest.raises(ValueError, match=r"lies outside \[t0, t1\] = \[0\.0, 1\.0\]"):
        sol.evaluate(1.5)


def test_dt0_of_the_wrong_length():
    f = CountingField()
    with pytest.raises(ValueError, match=r"dt0.*\(3,\)"):
        call(f, dt0=torch.tensor([0.1, 0.2, 0.3]))
    assert f.calls == 0


def test_rtol_below_the_dtype_roundoff_warns():
    y0 = torch.ones(1, 2)  # float32: unit roundoff 6e-8
    with pytest.warns(UserWarning, match=r"rtol=1e-10 is below the unit roundoff of torch\.float32"):
        dxdt.solve(lambda t, y: -y, y0, 0.0, 0.1, rtol=1e-10, atol=1e-12)


def test_forward_sensitivities_refuse_a_size_that_cannot_fit(monkeypatch):
    from dxdt.adjoints import forward

    monkeypatch.setattr(forward, "MAX_SENSITIVITY_ENTRIES", 100)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 4).double()

        def forward(self, t, y):
            return self.net(y)

    y0 = torch.ones(2, 4, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"integrate 24 sensitivity columns \(the 4 state components of y0 and 20"):
        dxdt.solve(Field(), y0, 0.0, 1.0, gradient="forward")
