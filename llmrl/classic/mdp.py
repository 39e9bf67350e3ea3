"""Finite MDPs (S, A, P, R, gamma, s0, H) stored for fast exact dynamic programming.

Layout: P is a sparse CSR matrix of shape (A*S, S) whose row a*S + s holds P(.|s,a) (action-major, the
(A, S, S) stacking pymdptoolbox uses), so the Bellman backup of every state at once is one sparse mat-vec
`(P @ V).reshape(A, S)`; action-major makes the max over actions a contiguous elementwise max (~20x faster
than reducing a short last axis). `R` has P's sparsity pattern and holds R(s,a,s') on each possible transition
(the seed's R(s', a, s): the same function, arguments written in the other order); `r` (S, A) is the expected
reward r(s,a) = sum_s' P(s'|s,a) R(s,a,s'), the only reward the DP algorithms need.

Terminal states are absorbing and rewardless (P(s|s,a) = 1, r(s,a) = 0 for every a), so episodic tasks stay the
standard discounted model: V(terminal) = 0 under every policy.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

_ATOL = 1e-8  # tolerance on row sums; gymnasium's 1/3 + 1/3 + 1/3 is exact to ~1e-16

# Gridworld actions use FrozenLake's order so arrows and action ids mean the same thing in both.
LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3
ARROWS = "←↓→↑"
_MOVES = np.array([(0, -1), (1, 0), (0, 1), (-1, 0)])


class TabularMDP:
    """A finite MDP: P(s'|s,a) as CSR (A*S, S) (row a*S + s), R(s,a,s') on P's pattern, r(s,a) (S, A), gamma, s0 (S,).

    P: a dense (S, A, S) array indexed [s, a, s'], a scipy sparse (S*A, S) matrix with row s*A + a, or a list
    of A sparse (S, S) matrices (pymdptoolbox's sparse layout).
    R: (S, A) expected rewards r(s,a), or R(s,a,s') in any of P's layouts.
    gamma: discount in [0, 1]. s0: an initial state or a distribution (S,). horizon: optional H (finite-horizon
    problems; value_iteration uses it when no horizon is passed).
    """

    def __init__(self, P: Any, R: Any, gamma: float, s0: int | Sequence[float] | np.ndarray = 0,
                 horizon: int | None = None, name: str = "mdp"):
        self.name = name
        self.P, self.S, self.A = _transition_matrix(P)
        self.R, r = _reward_on_pattern(R, self.P, self.S, self.A)  # r: the given (S, A) rewards, else None
        rows = np.repeat(np.arange(self.A * self.S), np.diff(self.P.indptr))
        # Fortran order: r is (S, A) for the reader but stored (A, S) like P's rows, so r + (P @ V).reshape(A, S).T
        # stays contiguous
        self.r = np.array(r, dtype=float, order="F") if r is not None else np.bincount(
            rows, self.P.data * self.R.data, minlength=self.A * self.S).reshape(self.A, self.S).T
        if not (isinstance(gamma, (int, float, np.floating)) and 0.0 <= float(gamma) <= 1.0):
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.s0 = _initial_distribution(s0, self.S)
        if horizon is not None and not (isinstance(horizon, (int, np.integer)) and horizon >= 1):
            raise ValueError(f"horizon must be a positive int or None, got {horizon!r}")
        self.horizon = None if horizon is None else int(horizon)
        stay = np.bincount(rows, self.P.data * (self.P.indices == rows % self.S), minlength=self.A * self.S)
        # absorbing and rewardless under every action: V(s) = 0 for every policy
        self.terminal = ((stay.reshape(self.A, self.S).T >= 1 - _ATOL) & (self.r == 0)).all(axis=1)

    def __repr__(self) -> str:
        return (f"TabularMDP({self.name}: S={self.S}, A={self.A}, nnz={self.P.nnz}, gamma={self.gamma}, "
                f"horizon={self.horizon}, terminal states={int(self.terminal.sum())})")

    def dense_P(self) -> np.ndarray:
        """P as a dense (S, A, S) array (small MDPs only: S*A*S floats)."""
        return self.P.toarray().reshape(self.A, self.S, self.S).transpose(1, 0, 2)

    def to_env(self, max_episode_steps: int | None = None):
        """A gymnasium env that samples this MDP (terminated on entering a terminal state); wrapped in
        TimeLimit(max_episode_steps, default: the MDP's horizon) so continuing MDPs yield episodes."""
        env = TabularEnv(self)
        steps = max_episode_steps if max_episode_steps is not None else self.horizon
        return gym.wrappers.TimeLimit(env, max_episode_steps=steps) if steps is not None else env

    # ----------------------------------------------------------------------------------------- constructors
    @classmethod
    def gridworld(cls, shape: tuple[int, int] = (3, 4), walls: Sequence[tuple[int, int]] = ((1, 1),),
                  terminals: Mapping[tuple[int, int], float] | None = None, noise: float = 0.2,
                  living_reward: float = -0.04, gamma: float = 1.0, start: tuple[int, int] = (2, 0),
                  horizon: int | None = None) -> "TabularMDP":
        """Russell & Norvig's 4x3 gridworld (AIMA fig. 17.1), parameterized; state = row * ncols + col (row 0 on top).

        A move goes the intended way w.p. 1 - noise and to each perpendicular side w.p. noise/2; bumping into a
        wall or the edge stays put. Every step pays `living_reward`; entering a terminal cell also pays its value
        and the cell is absorbing, so V(s) equals AIMA's utility U(s) for non-terminal cells. Wall cells are
        unreachable absorbing states (kept so that states index the grid). Actions: 0 ←, 1 ↓, 2 →, 3 ↑.
        """
        terminals = {(0, 3): 1.0, (1, 3): -1.0} if terminals is None else dict(terminals)
        nrow, ncol = shape
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"gridworld noise must be in [0, 1], got {noise}")
        walls = {tuple(w) for w in walls}
        for cell in [*walls, *terminals, tuple(start)]:
            if not (0 <= cell[0] < nrow and 0 <= cell[1] < ncol):
                raise ValueError(f"gridworld cell {cell} is outside shape {shape}")
        if tuple(start) in walls or tuple(start) in terminals:
            raise ValueError(f"gridworld start {start} must be a free, non-terminal cell")
        S, A = nrow * ncol, 4
        P, R = np.zeros((S, A, S)), np.zeros((S, A, S))
        for r in range(nrow):
            for c in range(ncol):
                s = r * ncol + c
                if (r, c) in walls or (r, c) in terminals:
                    P[s, :, s] = 1.0
                    continue
                for a in range(A):
                    # intended direction, then the two perpendicular ones (a-1 and a+1 mod 4 are perpendicular)
                    for d, p in ((a, 1.0 - noise), ((a - 1) % 4, noise / 2), ((a + 1) % 4, noise / 2)):
                        nr, nc = r + _MOVES[d][0], c + _MOVES[d][1]
                        if not (0 <= nr < nrow and 0 <= nc < ncol) or (nr, nc) in walls:
                            nr, nc = r, c
                        s2 = nr * ncol + nc
                        P[s, a, s2] += p
                        R[s, a, s2] = living_reward + terminals.get((nr, nc), 0.0)
        return cls(P, R, gamma, s0=start[0] * ncol + start[1], horizon=horizon, name=f"gridworld{nrow}x{ncol}")

    @classmethod
    def from_gymnasium(cls, env: Any, gamma: float = 0.99, terminal: str = "absorb",
                       horizon: int | None = None) -> "TabularMDP":
        """The MDP of a gymnasium toy-text env (FrozenLake, Taxi, CliffWalking) from `env.unwrapped.P`.

        P[s][a] is a list of (prob, next_state, reward, terminated). terminal="absorb" makes every state entered
        with terminated=True absorbing and rewardless (state ids stay the env's); it refuses an env where a state
        reachable from s0 also enters such a state without terminating (use terminal="sink" there: terminating
        transitions then go to one extra absorbing state with id S).
        """
        u = env.unwrapped
        if not hasattr(u, "P"):
            raise ValueError(f"from_gymnasium needs a toy-text env with env.unwrapped.P; {type(u).__name__} has none")
        if terminal not in ("absorb", "sink"):
            raise ValueError(f"from_gymnasium terminal must be 'absorb' or 'sink', got {terminal!r}")
        if not (isinstance(env.observation_space, gym.spaces.Discrete)
                and isinstance(env.action_space, gym.spaces.Discrete)):
            raise ValueError("from_gymnasium needs Discrete observation and action spaces")
        S, A = int(env.observation_space.n), int(env.action_space.n)
        entries = [(a * S + s, int(s2), float(p), float(rew), bool(term))
                   for s in range(S) for a in range(A) for p, s2, rew, term in u.P[s][a]]
        rows, cols, probs, rewards, ends = (np.array(x) for x in zip(*entries))
        s0 = np.asarray(getattr(u, "initial_state_distrib", _one_hot(0, S)), dtype=float)
        name = getattr(env.spec, "id", None) or type(u).__name__
        if terminal == "sink":
            n, cols = S + 1, np.where(ends, S, cols)
            rows = rows + rows // S  # renumber a*S + s as a*(S+1) + s for the extra state
            loops_from, loops_to, s0 = np.arange(A) * (S + 1) + S, np.full(A, S), np.append(s0, 0.0)
        else:
            n, absorbing = S, np.zeros(S, bool)
            absorbing[cols[ends & (probs > 0)]] = True
            keep = ~absorbing[rows % S]  # the env's own transitions out of terminal states are replaced
            rows, cols, probs, rewards, ends = rows[keep], cols[keep], probs[keep], rewards[keep], ends[keep]
            _refuse_nonterminating_entries(S, A, rows, cols, probs, ends, absorbing, s0, name)
            loops_from = (np.arange(A)[:, None] * S + np.flatnonzero(absorbing)).ravel()
            loops_to = loops_from % S
        rows, cols = np.concatenate([rows, loops_from]), np.concatenate([cols, loops_to])
        probs = np.concatenate([probs, np.ones(loops_from.size)])
        rewards = np.concatenate([rewards, np.zeros(loops_from.size)])
        # Same coordinates give the same CSR pattern; dividing merges an s' listed twice into its mean reward.
        P = sp.coo_array((probs, (rows, cols)), shape=(A * n, n)).tocsr()
        PR = sp.coo_array((probs * rewards, (rows, cols)), shape=(A * n, n)).tocsr()
        R = sp.csr_array((np.divide(PR.data, P.data, out=np.zeros_like(P.data), where=P.data > 0),
                          P.indices, P.indptr), shape=P.shape)
        return cls([P[a * n:(a + 1) * n] for a in range(A)], [R[a * n:(a + 1) * n] for a in range(A)],
                   gamma, s0=s0, horizon=horizon, name=name)

    @classmethod
    def random(cls, S: int, A: int, successors: int = 5, gamma: float = 0.95, seed: int = 0,
               horizon: int | None = None) -> "TabularMDP":
        """A seeded random sparse MDP: each (s,a) moves to `successors` uniform states (duplicates merge) with
        Dirichlet(1) probabilities; r(s,a) ~ U[0, 1)."""
        if S < 1 or A < 1 or successors < 1:
            raise ValueError(f"random MDP needs S, A, successors >= 1, got S={S}, A={A}, successors={successors}")
        rng = np.random.default_rng(seed)
        rows = np.repeat(np.arange(A * S), successors)  # row a*S + s
        cols = rng.integers(0, S, size=A * S * successors)
        w = rng.exponential(size=(A * S, successors))  # normalized Exp(1) draws are Dirichlet(1)
        probs = (w / w.sum(axis=1, keepdims=True)).ravel()
        P = sp.coo_array((probs, (rows, cols)), shape=(A * S, S)).tocsr()
        r = rng.random((S, A))
        return cls([P[a * S:(a + 1) * S] for a in range(A)], r, gamma, s0=np.full(S, 1.0 / S), horizon=horizon,
                   name=f"random(S={S},A={A})")

    @classmethod
    def forest(cls, S: int = 3, r1: float = 4.0, r2: float = 2.0, p: float = 0.1, gamma: float = 0.9) -> "TabularMDP":
        """pymdptoolbox's forest-management example (`mdptoolbox.example.forest`): state = forest age, actions
        0 wait / 1 cut; a fire (prob p) resets the age to 0; waiting in the oldest state pays r1, cutting it r2,
        cutting any other non-zero age pays 1."""
        if S < 2 or not 0.0 <= p <= 1.0:
            raise ValueError(f"forest needs S >= 2 and p in [0, 1], got S={S}, p={p}")
        P = np.zeros((S, 2, S))
        P[:, 0, 0] = p
        P[np.arange(S), 0, np.minimum(np.arange(S) + 1, S - 1)] += 1.0 - p
        P[:, 1, 0] = 1.0
        r = np.zeros((S, 2))
        r[S - 1, 0] = r1
        r[1:, 1] = 1.0
        r[S - 1, 1] = r2
        return cls(P, r, gamma, s0=0, name=f"forest(S={S})")

    @classmethod
    def two_state(cls, gamma: float = 0.9) -> "TabularMDP":
        """The two-state, two-action example of pymdptoolbox's docs (P[a] = [[.5,.5],[.8,.2]], [[0,1],[.1,.9]];
        r = [[5, 10], [-1, 2]])."""
        P_ass = np.array([[[0.5, 0.5], [0.8, 0.2]], [[0.0, 1.0], [0.1, 0.9]]])  # pymdptoolbox's (A, S, S)
        r = np.array([[5.0, 10.0], [-1.0, 2.0]])
        return cls(P_ass.transpose(1, 0, 2), r, gamma, s0=0, name="two_state")


class TabularEnv(gym.Env):
    """Samples a TabularMDP: s ~ s0, s' ~ P(.|s,a), reward R(s,a,s'), terminated on entering a terminal state."""

    metadata: dict = {"render_modes": []}

    def __init__(self, mdp: TabularMDP):
        self.mdp = mdp
        self.observation_space = gym.spaces.Discrete(mdp.S)
        self.action_space = gym.spaces.Discrete(mdp.A)
        self._cdf = np.cumsum(mdp.P.data)  # one running sum over all CSR rows; sample by inverse CDF in a row
        self.s = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.s = int(self.np_random.choice(self.mdp.S, p=self.mdp.s0))
        return self.s, {}

    def step(self, action):
        row = int(action) * self.mdp.S + self.s
        lo, hi = self.mdp.P.indptr[row], self.mdp.P.indptr[row + 1]
        base = self._cdf[lo - 1] if lo > 0 else 0.0
        u = base + self.np_random.random() * (self._cdf[hi - 1] - base)
        j = min(lo + int(np.searchsorted(self._cdf[lo:hi], u, side="right")), hi - 1)
        self.s = int(self.mdp.P.indices[j])
        return self.s, float(self.mdp.R.data[j]), bool(self.mdp.terminal[self.s]), False, {}


# --------------------------------------------------------------------------------------------- validation
def _action_major(X: Any, what: str) -> tuple[sp.csr_array | np.ndarray, int, int]:
    """X in any accepted layout -> (CSR (A*S, S) with row a*S + s, S, A), or a dense (S, A) array unchanged."""
    if isinstance(X, (list, tuple)) and len(X) > 0 and all(sp.issparse(x) for x in X):
        blocks = [sp.csr_array(x, dtype=float) for x in X]  # pymdptoolbox: one (S, S) matrix per action
        S = blocks[0].shape[0]
        if any(b.shape != (S, S) for b in blocks):
            raise ValueError(f"{what} as a list must hold A square (S, S) matrices, got {[b.shape for b in blocks]}")
        return sp.vstack(blocks, format="csr"), S, len(blocks)
    if sp.issparse(X):
        X = sp.csr_array(X, dtype=float)
        S = X.shape[1]
        if X.ndim != 2 or S == 0 or X.shape[0] % S != 0:
            raise ValueError(f"sparse {what} must have shape (S*A, S) with row s*A + a, got {X.shape}")
        A = X.shape[0] // S
        order = np.arange(A * S)
        return X[(order % S) * A + order // S], S, A  # row a*S + s of the result is row s*A + a of X
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        return X, X.shape[0], X.shape[1]
    if X.ndim != 3 or X.shape[0] != X.shape[2] or 0 in X.shape:
        raise ValueError(f"{what} must have shape (S, A, S) indexed [s, a, s'], got {X.shape}")
    S, A = X.shape[0], X.shape[1]
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or inf")
    return sp.csr_array(X.transpose(1, 0, 2).reshape(A * S, S)), S, A


def _transition_matrix(P: Any) -> tuple[sp.csr_array, int, int]:
    """Validate P and return it as CSR (A*S, S) (row a*S + s, int32 indices) with S, A."""
    P, S, A = _action_major(P, "P")
    if not sp.issparse(P):
        raise ValueError(f"P must have shape (S, A, S) indexed [s, a, s'], got {P.shape}")
    if not np.isfinite(P.data).all():
        raise ValueError("P contains NaN or inf")
    if (P.data < 0).any():
        i = int(np.argmin(P.data))
        row = int(np.searchsorted(P.indptr, i, side="right") - 1)
        raise ValueError(f"P must be non-negative: P(s'={P.indices[i]} | s={row % S}, a={row // S}) = {P.data[i]}")
    P.sum_duplicates()
    P.eliminate_zeros()
    sums = np.asarray(P.sum(axis=1)).ravel()
    bad = np.flatnonzero(np.abs(sums - 1.0) > _ATOL)
    if bad.size:
        a, s = divmod(int(bad[0]), S)
        raise ValueError(f"P rows must sum to 1: P(.|s={s}, a={a}) sums to {sums[bad[0]]:.6g} "
                         f"({bad.size} bad rows); normalize P[s, a, :]")
    if P.nnz < 2**31 and A * S < 2**31:  # int32 indices: half the index memory and a faster mat-vec
        P = sp.csr_array((P.data, P.indices.astype(np.int32), P.indptr.astype(np.int32)), shape=P.shape)
    return P, S, A


def _reward_on_pattern(R: Any, P: sp.csr_array, S: int, A: int) -> tuple[sp.csr_array, np.ndarray | None]:
    """R(s,a,s') on P's sparsity pattern (CSR sharing P's indptr/indices) from any accepted reward layout, and
    R itself when it is given as expected rewards r(s,a) (S, A), kept exact rather than re-summed."""
    rows = np.repeat(np.arange(A * S), np.diff(P.indptr))
    R, RS, RA = _action_major(R, "R")
    if (RS, RA) != (S, A):
        raise ValueError(f"R must have shape (S, A) = {(S, A)} or (S, A, S) = {(S, A, S)} (or P's sparse layout), "
                         f"got S={RS}, A={RA}")
    if sp.issparse(R):
        values = np.asarray(R[rows, P.indices]).ravel()
    else:
        values = R.T.reshape(-1)[rows]  # r(s,a) on every successor of (s,a)
    if not np.isfinite(values).all():
        raise ValueError("R contains NaN or inf on a transition with P > 0")
    return sp.csr_array((values.astype(float), P.indices, P.indptr), shape=P.shape), (None if sp.issparse(R) else R)


def _initial_distribution(s0: Any, S: int) -> np.ndarray:
    if isinstance(s0, (int, np.integer)):
        if not 0 <= s0 < S:
            raise ValueError(f"s0 must be a state in [0, {S}), got {s0}")
        return _one_hot(int(s0), S)
    d = np.asarray(s0, dtype=float)
    if d.shape != (S,) or (d < 0).any() or abs(d.sum() - 1.0) > _ATOL:
        raise ValueError(f"s0 must be a state in [0, {S}) or a distribution of shape ({S},) summing to 1")
    return d


def _one_hot(i: int, n: int) -> np.ndarray:
    d = np.zeros(n)
    d[i] = 1.0
    return d


def _refuse_nonterminating_entries(S, A, rows, cols, probs, ends, absorbing, s0, name) -> None:
    """Raise if a state reachable from s0 enters an absorbing (terminated-target) state without terminating."""
    live = probs > 0
    adj = sp.csr_array((np.ones(live.sum()), (rows[live] % S, cols[live])), shape=(S, S))
    reachable = np.zeros(S, bool)
    for s in np.flatnonzero(s0 > 0):
        reachable[breadth_first_order(adj, int(s), directed=True, return_predecessors=False)] = True
    clash = live & ~ends & absorbing[cols] & reachable[rows % S]
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise ValueError(f"from_gymnasium({name}): state {rows[i] % S} enters terminal state {cols[i]} without "
                         "terminating, so making that state absorbing would change the env; pass terminal='sink'")
