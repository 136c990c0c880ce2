"""Forward sensitivities: integrate dy/dθ alongside y; the cheapest gradient for a few parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .._loop import LoopResult, integrate
from .._problem import ODEProblem, from_loop_layout, to_loop_layout
from .._solution import Solution, Status
from .._term import Term
from ..solvers._combine import per_sample
from ._augmented import AugmentedTerm, seminorm_tolerances
from ._function import DifferentiableSolve, initial_time_gradient, save_time_gradients
from ._params import check_tracked, find_params, param_list, unique_requiring_grad
from .base import AbstractGradient


class ForwardSensitivity(AbstractGradient):
    """Solve the forward sensitivity equations ``dS/dt = ∂f/∂y S + ∂f/∂θ`` together with ``y``.

    ``S`` has one column per input direction: the ``m`` state components of ``y0`` (batched across samples
    in per-sample mode; in joint mode the whole ``(B, *S)`` state counts) and every element of the
    parameters. All columns come from one vectorized Jacobian-vector product of ``f`` per stage
    (``torch.func.vmap`` over ``torch.func.jvp``) and are error-controlled with the state. The Jacobian of
    the saved states is kept; the backward pass only contracts it with the incoming gradient. Cheapest when
    ``m + P`` is small (mechanistic models, fitting); for neural networks use an adjoint.

    ``f`` must be functional in what is differentiated: the parameters of ``f`` when it is an ``nn.Module``
    and the tensors in ``args`` (``f`` is re-called with them substituted), plus ``y0``, ``t0``, ``t1`` and the
    save times. A tensor requiring grad that ``f`` reads through a closure cannot be substituted: pass it in
    ``args``.

    By default the sensitivities do not take part in step-size control, so the steps are the forward
    solve's and, for explicit Runge–Kutta methods, the result is the derivative of the discrete solution:
    :class:`Autodiff`'s gradient, to rounding.

    Args:
        params: restrict the differentiated parameters (a subset of the module's parameters and ``args``).
        control_sensitivities: let the sensitivities' error estimates shape the steps too (more steps; the
            gradient of the exact solution to the tolerances rather than of the discrete one).
    """

    name = "forward"

    def __init__(self, params: Sequence[torch.Tensor] | None = None, *, control_sensitivities: bool = False):
        self.params = param_list(params)
        self.control_sensitivities = bool(control_sensitivities)

    def check(self, problem: ODEProblem) -> None:
        if problem.save.steps or problem.save.dense:
            raise ValueError(
                "gradient='forward' differentiates the states at the save times only; SaveAt(steps=True) and "
                "SaveAt(dense=True) are not supported with it: save at the times you need (saveat=ts), or use "
                "gradient='autodiff'"
            )

    def solve(self, problem: ODEProblem) -> Solution:
        substitution = _Substitution(problem.term)
        readable = substitution.tensors
        wanted = readable if self.params is None else unique_requiring_grad(self.params)
        unreachable = [p for p in find_params(problem.term.f, problem.term.args) if all(p is not q for q in readable)]
        if self.params is not None:
            unreachable += [p for p in wanted if all(p is not q for q in readable + unreachable)]
        if unreachable:
            shapes = [tuple(p.shape) for p in unreachable[:4]]
            raise ValueError(
                f"gradient='forward' cannot differentiate {len(unreachable)} tensor(s) requiring grad that f reads "
                f"outside args and its own module parameters (shapes {shapes}): pass them in args=..., or use "
                "gradient='autodiff' or an adjoint"
            )
        if torch.is_grad_enabled() and self.params is None:  # found automatically: make sure nothing was missed
            with torch.enable_grad():
                y_in = problem.y0.detach().requires_grad_(True)
                out = problem.term(problem.t0.detach(), y_in)
            if out.requires_grad:
                check_tracked(out, [*readable, y_in], self.name)
        sensitivity = _Sensitivity(problem, substitution, wanted, self.control_sensitivities)
        _check_size(sensitivity)
        ys = DifferentiableSolve.apply(sensitivity, problem.y0, problem.t0, problem.save_times(), *wanted)
        return dataclasses.replace(sensitivity.solution, ys=from_loop_layout(ys, problem.joint))


class _Substitution:
    """Calls the user's ``f`` with its differentiable tensors replaced: ``args`` leaves and module parameters."""

    def __init__(self, term: Term):
        self.term = term
        leaves, self.spec = tree_flatten(term.args)
        self.leaves = leaves
        self.arg_slots = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
        self.module = term.f if isinstance(term.f, nn.Module) else None
        self.names = [] if self.module is None else [n for n, p in self.module.named_parameters() if p.requires_grad]
        module_params = dict(self.module.named_parameters()) if self.module is not None else {}
        self.tensors = [leaves[i] for i in self.arg_slots] + [module_params[n] for n in self.names]

    def __call__(self, t: torch.Tensor, y: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        """``f(t, y)`` (loop layout, float64 ``t``) with ``values`` in place of :attr:`tensors`."""
        leaves = list(self.leaves)
        for slot, value in zip(self.arg_slots, values):
            leaves[slot] = value
        args = tree_unflatten(leaves, self.spec)
        module_values = dict(zip(self.names, values[len(self.arg_slots) :]))
        term = self.term
        t_user = t.to(y.dtype).reshape(term.time_shape)
        y_user = y.squeeze(0) if term.joint else y
        call_args = (t_user, y_user, args) if term.pass_args else (t_user, y_user)
        out = functional_call(self.module, module_values, call_args) if self.module is not None else term.f(*call_args)
        return out.unsqueeze(0) if term.joint else out


class _Sensitivity:
    name = ForwardSensitivity.name

    def __init__(self, problem: ODEProblem, substitution: _Substitution, wanted: list[torch.Tensor], control: bool):
        self.problem, self.substitution, self.control = problem, substitution, control
        # Differentiate only the wanted tensors; the others are substituted by themselves with zero tangents.
        self.wanted = [any(p is w for w in wanted) for p in substitution.tensors]
        self.params = [p for p, w in zip(substitution.tensors, self.wanted) if w]
        self.m = problem.y0[0].numel()
        # Columns for y0 only when its gradient (or t0's, which follows from it) can be asked for.
        self.k0 = self.m if problem.y0.requires_grad or problem.t0.requires_grad else 0
        self.n_params = sum(p.numel() for p in self.params)
        self.solution: Solution | None = None

    def _tangents(self, z: torch.Tensor) -> list[torch.Tensor]:
        """One-hot parameter tangents ``(Q, *p.shape)`` for every substituted tensor (zero for y0 columns)."""
        q = self.k0 + self.n_params
        out, offset = [], self.k0
        for p, wanted in zip(self.substitution.tensors, self.wanted):
            tangent = torch.zeros((q, p.numel()), dtype=p.dtype, device=p.device)
            if wanted:
                tangent[offset : offset + p.numel()] = torch.eye(p.numel(), dtype=p.dtype, device=p.device)
                offset += p.numel()
            out.append(tangent.reshape(q, *p.shape))
        return out

    def forward(self) -> torch.Tensor:
        problem, m, k0 = self.problem, self.m, self.k0
        q = k0 + self.n_params
        values = [p.detach() for p in self.substitution.tensors]
        y0 = problem.y0.detach()
        n = y0.shape[0]
        shape = y0.shape
        with torch.no_grad():
            tangents = self._tangents(y0)
            s0 = torch.zeros(n, q, m, dtype=y0.dtype, device=y0.device)
            s0[:, :k0] = torch.eye(k0, m, dtype=y0.dtype, device=y0.device)
            z0 = torch.cat([y0.reshape(n, m), s0.reshape(n, q * m)], dim=1)

            def sensitivity_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
                y = z[:, :m].reshape(shape)
                s = z[:, m:].reshape(n, q, *shape[1:]).movedim(1, 0)  # (Q, n, *S)

                def f(y_, values_):
                    return self.substitution(t, y_, values_)

                def column(s_q, tangent_q):
                    return jvp(f, (y, values), (s_q, tangent_q))

                f_y, ds = vmap(column, out_dims=(None, 0))(s, tangents)
                return torch.cat([f_y.reshape(n, m), ds.movedim(0, 1).reshape(n, q * m)], dim=1)

            reps = q + 1
            loop = problem.loop()
            loop.term = AugmentedTerm(sensitivity_field)
            rtol, atol = problem.rtol.reshape(n, m), problem.atol.reshape(n, m)
            if self.control:
                loop.rtol, loop.atol = rtol.repeat(1, reps), atol.repeat(1, reps)
            else:
                loop.rtol, loop.atol = seminorm_tolerances(rtol, atol, reps * m)
            result = integrate(loop, z0)
            self.success = result.status == Status.SUCCESS
            # The saved augmented states through the usual assembly (save times, t1), in loop layout; and the
            # user's solution from the y components alone.
            z_problem = dataclasses.replace(problem, y0=z0, joint=False, batch=n)
            zs = z_problem.assemble(result)[0].ys  # (n, T, (1 + Q) m)
            self.solution = problem.assemble(_state_part(result, m, shape))[0]
        n_t = zs.shape[1]
        self.jacobian = zs[..., m:].reshape(n, n_t, q, m)  # d y(t_k) / d (y0, θ)
        return zs[..., :m].reshape(n, n_t, *shape[1:])

    def backward(self, grad_ys: torch.Tensor, needs: tuple[bool, ...]):
        problem, m = self.problem, self.m
        n, n_t = grad_ys.shape[:2]
        ok = per_sample(self.success, grad_ys)
        grad = torch.where(ok, grad_ys, 0.0).reshape(n, n_t, 1, m)
        jac = torch.where(ok.reshape(n, 1, 1, 1), self.jacobian, 0.0)
        g = (grad * jac).sum(dim=(1, 3))  # (n, Q)
        k0 = self.k0
        grad_y0 = g[:, :k0].reshape(problem.y0.shape) if k0 else torch.zeros_like(problem.y0)
        grad_t0 = None
        if needs[1]:
            grad_t0 = initial_time_gradient(problem.term, problem.t0.detach(), problem.y0.detach(), grad_y0)
        grad_ts = None
        if needs[2]:
            saved = to_loop_layout(self.solution.ys, problem.joint)
            grad_ts = save_time_gradients(problem.term, problem.save_times().detach(), saved, grad_ys)
            grad_ts = torch.where(self.success[:, None], grad_ts, 0.0)
        grads, offset = [], k0
        for p in self.params:
            grads.append(g[:, offset : offset + p.numel()].sum(0).reshape(p.shape).to(p.dtype))
            offset += p.numel()
        return (grad_y0 if needs[0] else None, grad_t0, grad_ts, *grads)


def _state_part(result: LoopResult, m: int, shape: torch.Size) -> LoopResult:
    """The loop result of the augmented solve restricted to the state ``y`` (its first ``m`` components)."""
    records = result.records
    if records is not None:
        steps = records.y1.shape[0]
        records = records._replace(
            y1=records.y1[..., :m].reshape(steps, *shape),
            coefficients=records.coefficients[:, :, :m].reshape(steps, *shape, -1),
        )
    return dataclasses.replace(
        result, y=result.y[:, :m].reshape(shape), f=result.f[:, :m].reshape(shape), records=records
    )


#: The most sensitivity entries (columns × state size × samples) a forward-sensitivity solve may carry:
#: 2**27 is 0.5 GiB in float32 per copy of the state, and a step holds about ten copies.
MAX_SENSITIVITY_ENTRIES = 2**27


def _check_size(sensitivity: _Sensitivity) -> None:
    problem = sensitivity.problem
    columns = sensitivity.k0 + sensitivity.n_params
    entries = columns * sensitivity.m * problem.y0.shape[0]
    if entries > MAX_SENSITIVITY_ENTRIES:
        raise ValueError(
            f"gradient='forward' would integrate {columns} sensitivity columns (the {sensitivity.k0} state components "
            f"of y0 and {sensitivity.n_params} parameters) of {sensitivity.m * problem.y0.shape[0]} entries each: "
            f"{entries:.3g} numbers per state, more than the {MAX_SENSITIVITY_ENTRIES:.3g} allowed. Forward "
            "sensitivities are for a few parameters; use gradient='backsolve', 'interpolate' or 'autodiff'"
        )
