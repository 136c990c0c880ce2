"""Optimizers over a batch of independent unknown vectors: Levenberg–Marquardt, L-BFGS, Adam.

Levenberg–Marquardt (Marquardt 1963, with Nielsen's damping update, Madsen, Nielsen & Tingleff,
"Methods for non-linear least squares problems", 2004) is the default: with the Fisher information of the
noise model in place of ``JᵀJ`` it is Fisher scoring with damping, so it serves every noise model. Each row of
the batch (a start, a profile point) has its own damping and its own convergence test; rows that are done
are dropped from the solves, so a batch costs one solve per iteration until its slowest row converges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._problem import Evaluation, Problem

__all__ = ["OptResult", "adam", "lbfgs", "levenberg_marquardt"]

Callback = Callable[[int, float], None]


@dataclass
class OptResult:
    """Outcome of an optimizer, per row of the batch.

    Attributes:
        u: ``(B, P)`` internal values of the free unknowns.
        objective: ``(B,)``.
        aux: ``(B,)`` nuisance parameter of the noise model (negative-binomial ``k``) or ``None``.
        converged: ``(B,)`` bool.
        reasons: why each row stopped.
        n_iter: iterations of the batch.
        history: best objective after each iteration.
        jac: ``(B, M, P)`` Jacobian of the outputs at ``u`` (Levenberg–Marquardt), else ``None``.
        mu: ``(B, T, K)`` predictions at ``u``.
        extra: what Levenberg–Marquardt's ``extra`` returned (its first two items the rows and free masks) and
            what the solve gave for those rows: ``(returned, evaluation, Jacobian)``, or ``None``.
    """

    u: torch.Tensor
    objective: torch.Tensor
    aux: torch.Tensor | None
    converged: torch.Tensor
    reasons: list[str]
    n_iter: int
    history: list[float] = field(default_factory=list)
    jac: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    pen: torch.Tensor | None = None
    extra: tuple | None = None


def _fit_aux(
    problem: Problem, ev: Evaluation, aux: torch.Tensor | None, rows: torch.Tensor | None = None
) -> torch.Tensor | None:
    if aux is None:
        return None
    y, mask = problem.y_flat(rows), problem.mask_flat(rows)
    return problem.noise.fit_aux(torch.where(mask, y, 0.0), ev.mu.flatten(1).detach(), mask, aux)


def _start_aux(problem: Problem, ev: Evaluation, aux0: torch.Tensor | None) -> torch.Tensor | None:
    mu = ev.mu.flatten(1).detach()
    y, mask = problem.y_flat(), problem.mask_flat()
    y = torch.where(mask, y, 0.0).expand_as(mu)
    aux = aux0 if aux0 is not None else problem.noise.init_aux(y, mu, mask)
    if aux is None:
        return None
    aux = aux.expand(mu.shape[0]).clone()
    ok = ev.ok
    if bool(ok.any()):
        fitted = problem.noise.fit_aux(y, torch.nan_to_num(mu, nan=1.0), mask, aux)
        aux = torch.where(ok, fitted, aux)
    return aux


def _free_system(g: torch.Tensor, h: torch.Tensor, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient ``(B, P)`` and Fisher information ``(B, P, P)`` restricted to each row's free unknowns (a held
    one gets no gradient and unit curvature, so that it never moves)."""
    both = free.unsqueeze(2) & free.unsqueeze(1)
    return torch.where(free, g, 0.0), torch.where(both, h, 0.0) + torch.diag_embed((~free).to(h.dtype))


def _gauss_newton(g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gauss–Newton decrement ``½ gᵀ H⁺ g`` (the decrease a full step would bring if the model were exact)
    and that step ``−H⁺ g``, per row. The pseudo-inverse drops directions without curvature
    (over-parameterised models, e.g. neural terms)."""
    vals, vecs = torch.linalg.eigh(0.5 * (h + h.transpose(1, 2)))
    keep = vals > 1e-10 * vals.amax(1, keepdim=True).clamp_min(1e-300)
    proj = torch.einsum("bpq,bp->bq", vecs, g)
    inverse = torch.where(keep, 1.0 / vals.clamp_min(1e-300), 0.0)
    return 0.5 * (proj * proj * inverse).sum(1), -torch.einsum("bpq,bq->bp", vecs, proj * inverse)


def gauss_newton_points(
    problem: Problem, u: torch.Tensor, free: torch.Tensor, aux0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched solve at the rows of ``u``: each row's objective minus its Gauss–Newton decrement over its
    ``free`` unknowns (the minimum of the local model, where those unknowns are re-optimised with the others
    held), and the full Gauss–Newton step ``(B, P)`` that reaches it. Rows whose solve failed get ``inf``. The
    noise model's nuisance parameter is re-fitted at each row first."""
    ev, jac = problem.evaluate_jac(u)
    return gauss_newton_at(problem, ev, jac, free, aux0)


def gauss_newton_at(
    problem: Problem, ev: Evaluation, jac: torch.Tensor, free: torch.Tensor, aux0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gauss_newton_points` from an evaluation and Jacobian already made."""
    aux = _start_aux(problem, ev, aux0)
    f = problem.objective(ev, aux).detach()
    g, h = problem.gradient_and_fisher(Evaluation(ev.mu, ev.pen, ev.ok, ev.mu), jac, aux, None)
    decrement, step = _gauss_newton(*_free_system(g, h, free))
    minimum = torch.where(ev.ok & torch.isfinite(decrement), f - decrement, math.inf)
    return minimum, torch.where(ev.ok.unsqueeze(1), step, 0.0)


#: ``extra(u, evaluation, jac, aux) -> (rows, free) | None``: see :func:`levenberg_marquardt`.
ExtraRows = Callable[[torch.Tensor, Evaluation, torch.Tensor, "torch.Tensor | None"], "tuple | None"]


def _take(aux: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if aux is None else aux[rows]


# Levenberg–Marquardt's trust region on the internal scale (see the loop): its start and its largest value.
# Measured on the README's SIR fit from five starts (β, γ from (0.2, 0.05) to (3, 1)): 7–12 solves, against
# 7–33 with a fixed radius of 4 + |u|, which also ended once in a spurious optimum at γ → 0.
RADIUS_START = 1.0
RADIUS_MAX = 8.0


def _data_rows(problem: Problem, rows: torch.Tensor) -> torch.Tensor | None:
    """Which data sets the batch rows ``rows`` belong to (replicate fits), else ``None`` (one data set)."""
    return rows if problem.replicates is not None else None


def levenberg_marquardt(
    problem: Problem,
    u0: torch.Tensor,
    *,
    aux0: torch.Tensor | None = None,
    free: torch.Tensor | None = None,
    max_iter: int = 100,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
    lam0: float = 1e-3,
    levels: list[tuple[float, dict]] | None = None,
    start: tuple[Evaluation, torch.Tensor] | None = None,
    callback: Callback | None = None,
    extra: ExtraRows | None = None,
) -> OptResult:
    """Minimise ``problem``'s objective from each row of ``u0`` ``(B, P)``.

    Args:
        free: ``(B, P)`` bool, which unknowns each row may change (profile likelihood holds one fixed).
        ftol: converged when the Gauss–Newton decrement ``½ gᵀ H⁻¹ g`` (the decrease a full Gauss–Newton step
            predicts) is below ``ftol · objective``.
        xtol: converged when a step changes no internal value by more than ``xtol · (|u| + xtol)``.
        lam0: initial damping (relative to the diagonal of the Fisher information).
        levels: a tolerance schedule ``[(decrement, solve options), ...]`` from loose to strict, the last being the
            requested options: trial points are solved with the first level whose relative decrement the
            current points still exceed (far from the optimum, accuracy buys nothing, and a loose solve takes a
            fraction of the steps). The schedule only tightens; when it does, the current points are solved again
            at the new level in the same batch as the trial points, so that they are compared on equal terms.
            Convergence is only declared at the last level. Default: the problem's options throughout.
        start: the evaluation and Jacobian at ``u0`` if already known, made with ``levels[0]``'s options.
        extra: for a single row: called once, when the schedule reaches the requested options, with the current
            point, its evaluation, Jacobian and nuisance parameter (at the previous options); the ``(R, P)`` rows
            it returns first (then their free masks, then anything) are solved in that same batch (the profile
            likelihood's first trial points: no solve of their own) and come back in :attr:`OptResult.extra`.

    Returns:
        :class:`OptResult` with the Jacobian at the solution (for the covariance).
    """
    batch, p = u0.shape
    free = torch.ones(batch, p, dtype=torch.bool) if free is None else free.clone()
    levels = levels or [(0.0, dict(problem.solve_options))]
    last = len(levels) - 1
    level = 0  # the level of the current points' evaluations
    problem.solve_options = levels[0][1]
    u = u0.detach().clone()
    ev, jac = problem.evaluate_jac(u) if start is None else start
    jac = jac.clone()
    aux = _start_aux(problem, ev, aux0)
    f = problem.objective(ev, aux).detach()
    mu, pen, ok = ev.mu.detach().clone(), ev.pen.detach().clone(), ev.ok.clone()
    lam = torch.full((batch,), lam0, dtype=u.dtype)
    nu = torch.full((batch,), 2.0, dtype=u.dtype)
    radius = torch.full((batch,), RADIUS_START, dtype=u.dtype)
    linear = torch.tensor([problem.unknowns[i].transform.linear for i in problem.free], dtype=torch.bool)
    done = ~ok
    converged = torch.zeros(batch, dtype=torch.bool)
    reasons = ["" if bool(o) else "the ODE solve failed at the starting point" for o in ok]
    history: list[float] = []
    n_iter = 0
    eye = torch.eye(p, dtype=u.dtype)
    tighten = False
    extra_result = None
    for it in range(max_iter):
        active = ~done
        if not bool(active.any()):
            break
        n_iter = it + 1
        rows = active.nonzero().flatten()
        g, h = problem.gradient_and_fisher(
            Evaluation(mu[rows], pen[rows], ok[rows], mu[rows]), jac[rows], _take(aux, rows), _data_rows(problem, rows)
        )
        g, h = _free_system(g, h, free[rows])
        d = torch.diagonal(h, dim1=1, dim2=2)
        d = torch.maximum(d, 1e-12 * d.amax(1, keepdim=True)).clamp_min(1e-300)
        decrement, _ = _gauss_newton(g, h)
        relative = decrement / f[rows].abs().clamp_min(1e-300)
        # The loosest level that every active row still needs (never looser than the current one).
        # One level at a time: the optimum moves with the tolerance, and one step at each level lands near the
        # next level's optimum.
        needed = level + 1 if level < last and (tighten or bool((relative <= levels[level][0]).any())) else level
        small = relative <= ftol
        if level == last and bool(small.any()):
            for r in rows[small].tolist():
                done[r], converged[r] = True, True
                reasons[r] = f"converged: Gauss-Newton decrement below ftol={ftol:g} x objective"
            keep = ~small
            rows, g, h, d = rows[keep], g[keep], h[keep], d[keep]
        if rows.numel() == 0:
            break
        a = h + lam[rows, None, None] * torch.diag_embed(d)
        delta = -torch.linalg.solve(a + 1e-300 * eye, g)
        delta = torch.where(free[rows], delta, 0.0)
        # A trust region on the internal scale: no unknown moves by more than ``radius`` (a factor e^radius for
        # a log-transformed parameter; relative to max(1, |u|) for an untransformed one). Far from the optimum,
        # undamped Gauss–Newton steps otherwise overshoot by orders of magnitude, to parameters for which a
        # solve needs thousands of steps, and the damping takes several rejected solves to catch up.
        cap = radius[rows, None] * torch.where(linear, u[rows].abs().clamp_min(1.0), 1.0)
        delta = delta * (cap / delta.abs().clamp_min(1e-300)).amin(1, keepdim=True).clamp(max=1.0)
        predicted = -(g * delta).sum(1) - 0.5 * torch.einsum("bp,bpq,bq->b", delta, h, delta)
        u_try = (u[rows] + delta).detach()
        if needed > level:  # tighter solves from now on: the current points are solved again alongside
            more = None
            if needed == last and extra is not None and batch == 1 and problem.batchable:
                here = Evaluation(mu[rows], pen[rows], ok[rows], mu[rows])
                more = extra(u[rows][0], here, jac[rows], _take(aux, rows))
            level = needed
            problem.solve_options = levels[level][1]
            n = rows.numel()
            if problem.batchable:
                ev_both, jac_both = problem.evaluate_jac(torch.cat([u[rows], u_try, *([more[0]] if more else [])]))
                if more:
                    k = 2 * n
                    ev_more = Evaluation(ev_both.mu[k:], ev_both.pen[k:], ev_both.ok[k:], ev_both.out[k:])
                    extra_result = (more, ev_more, jac_both[k:])
                    ev_both = Evaluation(ev_both.mu[:k], ev_both.pen[:k], ev_both.ok[:k], ev_both.out[:k])
                    jac_both = jac_both[:k]
            else:  # shared parameters (an nn.Module): one solve per unknown vector
                pieces = [problem.evaluate_jac(v.unsqueeze(0)) for v in torch.cat([u[rows], u_try])]
                ev_both = Evaluation(
                    *(torch.cat([getattr(e, k) for e, _ in pieces]) for k in ("mu", "pen", "ok", "out"))
                )
                jac_both = torch.cat([j for _, j in pieces])
            mu[rows], pen[rows], ok[rows] = ev_both.mu[:n], ev_both.pen[:n], ev_both.ok[:n]
            jac[rows] = jac_both[:n]
            f[rows] = problem.objective(
                Evaluation(mu[rows], pen[rows], ok[rows], mu[rows]), _take(aux, rows), _data_rows(problem, rows)
            ).detach()
            ev_try = Evaluation(ev_both.mu[n:], ev_both.pen[n:], ev_both.ok[n:], ev_both.out[n:])
            jac_try = jac_both[n:]
        else:
            ev_try, jac_try = problem.evaluate_jac(u_try)
        f_try = problem.objective(ev_try, _take(aux, rows), _data_rows(problem, rows)).detach()
        improved = ev_try.ok & (f_try < f[rows])
        # At a loose level a failed step whose predicted decrease is within the loose solves' noise may be the
        # solver's error, not the model's: tighten rather than damp. A failed step that promised a large decrease
        # is the model's nonlinearity (a Gauss–Newton step from far away): damp it at the same level.
        within_noise = predicted <= levels[level][0] * f[rows].abs()
        tighten = level < last and bool((~improved & within_noise).any())
        rho = (f[rows] - f_try) / predicted.clamp_min(1e-300)
        lam_acc = lam[rows] * torch.clamp(1 - (2 * rho - 1) ** 3, min=1.0 / 3.0)
        lam[rows] = torch.where(improved, lam_acc, lam[rows] * nu[rows])
        nu[rows] = torch.where(improved, torch.full_like(nu[rows], 2.0), nu[rows] * 2)
        # The radius grows after a step that hit it and did what the model predicted (failures are damped).
        grow = improved & (rho > 0.75) & (delta.abs() >= 0.999 * cap).any(1)
        radius[rows] = torch.where(grow, (2 * radius[rows]).clamp_max(RADIUS_MAX), radius[rows])
        step_small = (delta.abs() <= xtol * (u[rows].abs() + xtol)).all(1)
        if bool(improved.any()):
            acc = improved.nonzero().flatten()
            tgt = rows[acc]
            u[tgt] = u_try[acc]
            jac[tgt] = jac_try[acc]
            mu[tgt], pen[tgt], ok[tgt] = ev_try.mu.detach()[acc], ev_try.pen.detach()[acc], ev_try.ok[acc]
            f_new = f_try[acc]
            if aux is not None:
                sub = Evaluation(mu[tgt], pen[tgt], ok[tgt], mu[tgt])
                aux[tgt] = _fit_aux(problem, sub, aux[tgt], _data_rows(problem, tgt))
                f_new = problem.objective(sub, aux[tgt], _data_rows(problem, tgt)).detach()
            f[tgt] = f_new
        for j, r in enumerate(rows.tolist()):
            if bool(step_small[j]) and level == last:
                done[r], converged[r] = True, True
                reasons[r] = f"converged: step below xtol={xtol:g}"
            elif float(lam[r]) > 1e16:
                done[r] = True
                reasons[r] = "stopped: the objective does not decrease along any damped Gauss-Newton step"
        history.append(float(f[torch.isfinite(f)].min()) if bool(torch.isfinite(f).any()) else math.inf)
        if callback is not None:
            callback(n_iter, history[-1])
    if level < last:  # stopped early (iteration limit, failure): leave the result at the requested tolerance
        problem.solve_options = levels[last][1]
        ev, jac_last = problem.evaluate_jac(u)
        mu, pen, ok, jac = ev.mu, ev.pen, ev.ok, jac_last
        f = problem.objective(ev, aux).detach()
        for r in range(batch):
            converged[r] = False
    for r in range(batch):
        if not done[r]:
            reasons[r] = f"did not converge in max_iter={max_iter} iterations"
    return OptResult(u, f, aux, converged, reasons, n_iter, history, jac, mu, pen, extra_result)


def _loss_closure(problem: Problem, u: torch.Tensor, aux_box: list, state: dict):
    def closure():
        if torch.is_grad_enabled():
            u.grad = None
        ev = problem.evaluate(u)
        f = problem.objective(ev, aux_box[0])
        state["ev"] = ev
        state["f"] = f.detach()
        safe = torch.where(ev.ok, f, torch.full_like(f, 1e300))
        loss = safe.sum()
        if torch.is_grad_enabled():
            loss.backward()
            if u.grad is not None:
                u.grad = torch.nan_to_num(u.grad, nan=0.0, posinf=0.0, neginf=0.0)
        return loss

    return closure


def lbfgs(
    problem: Problem,
    u0: torch.Tensor,
    *,
    aux0: torch.Tensor | None = None,
    max_iter: int = 500,
    ftol: float = 1e-10,
    gtol: float = 1e-8,
    callback: Callback | None = None,
) -> OptResult:
    """Minimise with ``torch.optim.LBFGS`` (strong Wolfe line search), in rounds of 10 iterations.

    Converged when a round lowers the objective by less than ``ftol`` (relative) or the gradient's largest
    entry falls below ``gtol · max(1, |objective|)``.
    """
    u = u0.detach().clone().requires_grad_(True)
    state: dict = {}
    with torch.no_grad():
        ev = problem.evaluate(u)
    aux_box = [_start_aux(problem, ev, aux0)]
    opt = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=10,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )
    closure = _loss_closure(problem, u, aux_box, state)
    f_old = float(closure().detach())
    reason, converged, history, n_iter = "", False, [], 0
    rounds = max(1, math.ceil(max_iter / 10))
    for r in range(rounds):
        opt.step(closure)
        n_iter = (r + 1) * 10
        with torch.no_grad():
            aux_box[0] = _fit_aux(problem, state["ev"], aux_box[0])
        f_new = float(closure().detach())
        history.append(f_new)
        if callback is not None:
            callback(n_iter, f_new)
        gmax = float(u.grad.abs().max()) if u.grad is not None else 0.0
        if not math.isfinite(f_new):
            reason = "stopped: the objective is not finite (an ODE solve failed)"
            break
        if abs(f_old - f_new) <= ftol * max(abs(f_new), 1e-300):
            reason, converged = f"converged: relative change in objective below ftol={ftol:g}", True
            break
        if gmax <= gtol * max(1.0, abs(f_new)):
            reason, converged = f"converged: gradient below gtol={gtol:g}", True
            break
        f_old = f_new
    else:
        reason = f"did not converge in max_iter={max_iter} iterations"
    ev = state["ev"]
    return OptResult(
        u.detach(),
        state["f"],
        aux_box[0],
        torch.tensor([converged] * u.shape[0]),
        [reason] * u.shape[0],
        n_iter,
        history,
        None,
        ev.mu.detach(),
        ev.pen.detach(),
    )


def adam(
    problem: Problem,
    u0: torch.Tensor,
    *,
    aux0: torch.Tensor | None = None,
    lr: float = 1e-2,
    max_iter: int = 2000,
    ftol: float = 1e-6,
    patience: int = 100,
    callback: Callback | None = None,
) -> OptResult:
    """Minimise with Adam (Kingma & Ba 2015): for many parameters (neural terms) and noisy objectives.

    Converged when the best objective improved by less than ``ftol`` (relative) over ``patience`` iterations;
    the best iterate is returned.
    """
    u = u0.detach().clone().requires_grad_(True)
    state: dict = {}
    with torch.no_grad():
        ev = problem.evaluate(u)
    aux_box = [_start_aux(problem, ev, aux0)]
    opt = torch.optim.Adam([u], lr=lr)
    closure = _loss_closure(problem, u, aux_box, state)
    best, best_u, best_at = math.inf, u.detach().clone(), 0
    history: list[float] = []
    reason, converged = f"did not converge in max_iter={max_iter} iterations", False
    last_report = time.perf_counter()
    it = 0
    for it in range(1, max_iter + 1):
        opt.zero_grad()
        loss = closure()
        f = float(loss.detach())
        if f < best * (1 - ftol) - 1e-300:
            best_at = it
        if f < best:
            best, best_u = f, u.detach().clone()
        opt.step()
        history.append(best)
        if aux_box[0] is not None and it % 20 == 0:
            with torch.no_grad():
                aux_box[0] = _fit_aux(problem, state["ev"], aux_box[0])
        if callback is not None and (time.perf_counter() - last_report > 0.5 or it == 1):
            callback(it, best)
            last_report = time.perf_counter()
        if it - best_at >= patience:
            reason, converged = (
                f"converged: objective improved by less than ftol={ftol:g} in {patience} iterations",
                True,
            )
            break
    with torch.no_grad():
        ev = problem.evaluate(best_u)
        f_best = problem.objective(ev, aux_box[0])
    return OptResult(
        best_u,
        f_best,
        aux_box[0],
        torch.tensor([converged] * u.shape[0]),
        [reason] * u.shape[0],
        it,
        history,
        None,
        ev.mu.detach(),
        ev.pen.detach(),
    )
