"""Exact dynamic programming on a TabularMDP: value iteration (finite horizon and discounted), Q-value iteration,
policy evaluation (linear solve or sweeps) and policy iteration.

Every backup is vectorized over states: Q = r + gamma * (P @ V).reshape(A, S).T is one sparse mat-vec with
P stored action-major as (A*S, S) (see mdp.py). Policies are int arrays (S,) (deterministic) or (S, A)
probabilities (stochastic).

Stopping rules for discounted value iteration (gamma < 1), both guaranteeing that the returned greedy policy is
tol-optimal, ||V* - V^pi||_inf < tol, and that the returned V is within tol/2 of V*:
- stop="sup" (Puterman 1994, Thm 6.3.1; Williams & Baird 1993): stop once ||V_k - V_{k-1}||_inf < tol(1-g)/(2g).
- stop="span" (Puterman 1994, Sec. 6.6.3; MacQueen 1966 bounds; pymdptoolbox's rule): stop once
  sp(V_k - V_{k-1}) = max - min < tol(1-g)/g, then shift V_k to the midpoint of the MacQueen bounds
  V_k + g/(1-g) min(dV) <= V* <= V_k + g/(1-g) max(dV). A constant shift does not change the greedy policy, and
  the span shrinks much faster than the sup norm when P mixes, so this rule needs far fewer sweeps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .mdp import TabularMDP

DIRECT_MAX_STATES = 500  # above this "exact" evaluation tries BiCGSTAB first: sparse LU of a random P_pi fills in


@dataclass
class DPResult:
    """V (S,), greedy policy (S,) int, Q (S, A); with a horizon H: V (H+1, S), policy (H, S), Q (H, S, A),
    indexed by the time step h (V[H] = 0). `iterations` counts Bellman backups (VI) or policy improvements (PI)."""
    V: np.ndarray
    policy: np.ndarray
    Q: np.ndarray
    iterations: int
    converged: bool = True


def q_from_v(mdp: TabularMDP, V: np.ndarray) -> np.ndarray:
    """One-step lookahead Q(s,a) = r(s,a) + gamma sum_s' P(s'|s,a) V(s'); V (S,) -> Q (S, A)."""
    return mdp.r + mdp.gamma * (mdp.P @ V).reshape(mdp.A, mdp.S).T


def greedy_policy(Q: np.ndarray) -> np.ndarray:
    """pi(s) = argmax_a Q(s,a) (lowest action on ties); Q (..., A) -> (...) int."""
    return np.argmax(Q, axis=-1)


def value_iteration(mdp: TabularMDP, horizon: int | None = None, tol: float = 1e-6, max_iters: int = 100_000,
                    stop: str = "sup", V0: np.ndarray | None = None) -> DPResult:
    """Value iteration: with a horizon H (argument, else mdp.horizon) the seed's Algorithm 1, backward induction
    V_H = 0, V_h = max_a r + gamma P V_{h+1} for h = H-1..0; otherwise the fixed point of eq. 5,
    V = max_a r + gamma P V, stopped by `stop` ("sup" or "span", see module doc) so the greedy policy is tol-optimal.

    gamma = 1 without a horizon needs an episodic MDP (absorbing terminal states); it stops once
    ||V_k - V_{k-1}||_inf < tol, which bounds no error a priori (every policy must end, or cycle at zero cost).
    """
    H = horizon if horizon is not None else mdp.horizon
    if H is not None:
        return _finite_horizon(mdp, int(H))
    _check_tolerance(tol, max_iters, "value_iteration")
    if stop not in ("sup", "span"):
        raise ValueError(f"value_iteration stop must be 'sup' or 'span', got {stop!r}")
    g = mdp.gamma
    if g == 1.0 and not mdp.terminal.any():
        raise ValueError("value_iteration with gamma=1 needs horizon= or an episodic MDP with absorbing, "
                         f"rewardless terminal states; {mdp.name} has none (use gamma < 1)")
    V = np.zeros(mdp.S) if V0 is None else np.array(V0, dtype=float)
    if V.shape != (mdp.S,):
        raise ValueError(f"value_iteration V0 must have shape ({mdp.S},), got {V.shape}")
    if g == 1.0:
        threshold = tol
    elif g == 0.0:
        threshold = np.inf  # one backup V = max_a r(s,a) is exact
    else:
        threshold = tol * (1 - g) / (2 * g) if stop == "sup" else tol * (1 - g) / g
    converged = False
    for k in range(1, max_iters + 1):
        V_new = q_from_v(mdp, V).max(axis=1)
        dV = V_new - V
        V = V_new
        if g < 1.0 and stop == "span":
            gap = dV.max() - dV.min()
            if gap < threshold:
                V = V + g / (1 - g) * (dV.max() + dV.min()) / 2  # midpoint of MacQueen's bounds on V*
                converged = True
                break
        elif np.abs(dV).max() < threshold:
            converged = True
            break
    if not converged:
        warnings.warn(f"value_iteration stopped at max_iters={max_iters} before reaching tol={tol}; "
                      "raise max_iters or tol", RuntimeWarning, stacklevel=2)
    # the policy greedy w.r.t. the stopped V_k is the tol-optimal one; one more backup also tightens V
    Q = q_from_v(mdp, V)
    return DPResult(Q.max(axis=1), greedy_policy(Q), Q, k + 1, converged)


def _finite_horizon(mdp: TabularMDP, H: int) -> DPResult:
    """Algorithm 1 (backward induction) for h = H-1..0; V (H+1, S), policy (H, S), Q (H, S, A)."""
    if H < 1:
        raise ValueError(f"value_iteration horizon must be >= 1, got {H}")
    V = np.zeros((H + 1, mdp.S))
    Q = np.zeros((H, mdp.S, mdp.A))
    for h in range(H - 1, -1, -1):
        Q[h] = q_from_v(mdp, V[h + 1])
        V[h] = Q[h].max(axis=1)
    return DPResult(V, greedy_policy(Q), Q, H)


def q_value_iteration(mdp: TabularMDP, tol: float = 1e-6, max_iters: int = 100_000) -> DPResult:
    """Q-value iteration (eqs. 8-9): Q_{k+1}(s,a) = r(s,a) + gamma sum_s' P(s'|s,a) max_a' Q_k(s',a'), Q (S, A).

    Stops once ||Q_k - Q_{k-1}||_inf < tol(1-g)/(2g); since ||max Q_k - max Q_{k-1}|| <= ||Q_k - Q_{k-1}||, the
    sup rule of value_iteration applies and the greedy policy of one more backup is tol-optimal."""
    _check_tolerance(tol, max_iters, "q_value_iteration")
    g = mdp.gamma
    if g == 1.0 and not mdp.terminal.any():
        raise ValueError(f"q_value_iteration with gamma=1 needs absorbing terminal states; {mdp.name} has none")
    threshold = tol if g == 1.0 else (np.inf if g == 0.0 else tol * (1 - g) / (2 * g))
    Q = np.zeros((mdp.S, mdp.A))
    converged = False
    for k in range(1, max_iters + 1):
        Q_new = q_from_v(mdp, Q.max(axis=1))
        dQ = np.abs(Q_new - Q).max()
        Q = Q_new
        if dQ < threshold:
            converged = True
            break
    if not converged:
        warnings.warn(f"q_value_iteration stopped at max_iters={max_iters} before reaching tol={tol}",
                      RuntimeWarning, stacklevel=2)
    Q = q_from_v(mdp, Q.max(axis=1))
    return DPResult(Q.max(axis=1), greedy_policy(Q), Q, k + 1, converged)


def policy_matrices(mdp: TabularMDP, policy: np.ndarray) -> tuple[sp.csr_array, np.ndarray]:
    """P_pi (S, S) sparse and r_pi (S,) of a deterministic (S,) int or stochastic (S, A) policy."""
    policy = np.asarray(policy)
    S, A = mdp.S, mdp.A
    if policy.shape == (S,) and np.issubdtype(policy.dtype, np.integer):
        if policy.min() < 0 or policy.max() >= A:
            raise ValueError(f"policy actions must be in [0, {A}), got range [{policy.min()}, {policy.max()}]")
        probs = np.zeros((S, A))
        probs[np.arange(S), policy] = 1.0
    elif policy.shape == (S, A):
        probs = policy.astype(float)
        sums = probs.sum(axis=1)
        if (probs < 0).any() or np.abs(sums - 1).max() > 1e-8:
            s = int(np.argmax(np.abs(sums - 1) + (probs < 0).any(axis=1)))
            raise ValueError(f"stochastic policy rows must be probabilities: pi(.|s={s}) = {probs[s]}")
    else:
        raise ValueError(f"policy must be an int array of shape ({S},) or probabilities of shape ({S}, {A}), "
                         f"got {policy.dtype} {policy.shape}")
    # Pi (S, A*S) puts pi(a|s) at column a*S + s (P's row of (s, a)), so P_pi = Pi @ P mixes P's rows
    cols = (np.arange(A) * S + np.arange(S)[:, None]).ravel()
    Pi = sp.csr_array((probs.ravel(), cols, np.arange(0, S * A + 1, A)), shape=(S, A * S))
    return (Pi @ mdp.P).tocsr(), (probs * mdp.r).sum(axis=1)


def policy_evaluation(mdp: TabularMDP, policy: np.ndarray, method: str = "exact", tol: float = 1e-10,
                      max_iters: int = 1_000_000) -> np.ndarray:
    """V^pi (S,) of a deterministic (S,) or stochastic (S, A) policy.

    method="exact": solve (I - gamma P_pi) V = r_pi (eq. 3) on the non-terminal states (V = 0 on terminals) to a
    1e-10 relative residual: sparse LU (SuperLU) up to DIRECT_MAX_STATES states; above, BiCGSTAB first (the LU
    of a random 1e4-state P_pi takes ~30 s from fill-in, BiCGSTAB milliseconds: gamma P_pi's spectrum lies in
    the disk of radius gamma) and sparse LU where BiCGSTAB stalls (gamma = 1, long episodes).
    method="iterative": sweep V <- r_pi + gamma P_pi V (eq. 10) until ||V - V^pi||_inf < tol (gamma < 1; with
    gamma = 1 until a sweep changes V by less than tol).
    """
    P_pi, r_pi = policy_matrices(mdp, policy)
    g = mdp.gamma
    if method == "iterative":
        _check_tolerance(tol, max_iters, "policy_evaluation")
        # ||V_k - V^pi|| <= g/(1-g) ||V_k - V_{k-1}|| (T_pi is a g-contraction)
        threshold = tol if g == 1.0 else (np.inf if g == 0.0 else tol * (1 - g) / g)
        V = np.zeros(mdp.S)
        for _ in range(max_iters):
            V_new = r_pi + g * (P_pi @ V)
            if np.abs(V_new - V).max() < threshold:
                return V_new
            V = V_new
        raise RuntimeError(f"policy_evaluation(iterative) did not converge in max_iters={max_iters}"
                           + (" (with gamma=1 the policy must reach a terminal state)" if g == 1.0 else ""))
    if method != "exact":
        raise ValueError(f"policy_evaluation method must be 'exact' or 'iterative', got {method!r}")
    live = ~mdp.terminal
    n = int(live.sum())
    V = np.zeros(mdp.S)
    if n == 0:
        return V
    M = sp.eye_array(n, format="csr") - g * (P_pi[live][:, live] if n < mdp.S else P_pi)
    x = _solve(M, r_pi[live])
    if x is None:
        raise ValueError("policy_evaluation: I - gamma P_pi is singular" + (
            ": with gamma=1 the policy must reach a terminal state from every state (a proper policy); "
            "start from a proper policy (see proper_policy) or use gamma < 1" if g == 1.0 else ""))
    V[live] = x
    return V


def _solve(M: sp.csr_array, b: np.ndarray) -> np.ndarray | None:
    """x with M x = b to a 1e-10 relative residual, or None if M is singular. Large systems try BiCGSTAB first
    (milliseconds where sparse LU fills in); it can stall when gamma = 1 makes M ill-conditioned, then LU."""
    def solved(x):
        return np.isfinite(x).all() and np.abs(M @ x - b).max() <= 1e-10 * (1 + np.abs(b).max())

    if M.shape[0] > DIRECT_MAX_STATES:
        x, info = spla.bicgstab(M, b, rtol=1e-13, atol=0.0, maxiter=10_000)
        if info == 0 and solved(x):
            return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", spla.MatrixRankWarning)  # a singular M is reported by the caller
        x = np.atleast_1d(spla.spsolve(M.tocsc(), b))
    return x if solved(x) else None


def proper_policy(mdp: TabularMDP) -> np.ndarray:
    """A proper policy (S,) int: from every state it reaches a terminal state with probability 1, so its total
    reward is finite and policy evaluation is well posed at gamma = 1 (Bertsekas & Tsitsiklis 1996, stochastic
    shortest paths). States are layered by their distance to the terminal states: the terminals are layer 0, and
    a state joins layer k+1 through the action most likely to move it to a layer <= k (a positive probability),
    which it then takes. From every state a path down the layers has positive probability, so every episode ends.

    Raises ValueError naming the states from which no policy reaches a terminal state."""
    reached = mdp.terminal.copy()
    pi = np.zeros(mdp.S, dtype=int)
    while True:
        p_down = (mdp.P @ reached.astype(float)).reshape(mdp.A, mdp.S).T  # (S, A): P(reached | s, a)
        new = (p_down > 0).any(axis=1) & ~reached
        if not new.any():
            break
        pi[new] = p_down[new].argmax(axis=1)
        reached |= new
    if not reached.all():
        stuck = np.flatnonzero(~reached)
        raise ValueError(f"no policy reaches a terminal state from states {stuck[:10].tolist()}"
                         f"{' ...' if len(stuck) > 10 else ''} of {mdp.name}: with gamma=1 their total reward is "
                         "not defined; use gamma < 1")
    return pi


def policy_iteration(mdp: TabularMDP, policy: np.ndarray | None = None, evaluation: str = "exact",
                     max_iters: int = 10_000, tol: float = 1e-10) -> DPResult:
    """Policy iteration (Algorithm 2): evaluate pi (eq. 3), improve pi <- argmax_a Q^pi, until pi is stable.

    Starts from `policy`; by default from the greedy policy on r, or with gamma = 1 from `proper_policy(mdp)`:
    there an improper policy (one that can cycle forever, e.g. into a wall) has no finite value, and improvement
    from a proper policy stays proper when every cycle costs reward. The current action is kept unless another
    beats it by more than 1e-9 (relative), so ties cannot make it cycle. `iterations` = number of improvements
    that changed pi."""
    S = mdp.S
    if policy is None:
        pi = proper_policy(mdp) if mdp.gamma == 1.0 else greedy_policy(mdp.r)
    else:
        pi = np.asarray(policy).copy()
    if pi.shape != (S,) or not np.issubdtype(pi.dtype, np.integer):
        raise ValueError(f"policy_iteration initial policy must be an int array of shape ({S},), got {pi.shape}")
    improvements = 0
    for _ in range(max_iters):
        V = policy_evaluation(mdp, pi, method=evaluation, tol=tol)
        Q = q_from_v(mdp, V)
        best = Q.max(axis=1)
        current = Q[np.arange(S), pi]
        new = np.where(current >= best - 1e-9 * (1 + np.abs(best)), pi, greedy_policy(Q))
        if (new == pi).all():
            return DPResult(V, pi, Q, improvements, True)
        pi = new
        improvements += 1
    warnings.warn(f"policy_iteration stopped at max_iters={max_iters} with the policy still changing",
                  RuntimeWarning, stacklevel=2)
    return DPResult(V, pi, Q, improvements, False)


def _check_tolerance(tol: float, max_iters: int, fn: str) -> None:
    if not tol > 0:
        raise ValueError(f"{fn} tol must be > 0, got {tol}")
    if not max_iters >= 1:
        raise ValueError(f"{fn} max_iters must be >= 1, got {max_iters}")
