"""Experience replay for the DQN family: a uniform ring buffer (with k-step targets assembled at sampling time),
a vectorized sum-tree, and proportional prioritized replay (Schaul 2016).

Layout (as in Stable-Baselines3): arrays of shape (capacity, num_envs, ...) preallocated once; row t holds
step t of every env, so each env's transitions are consecutive in time and a k-step window is rows t..t+k-1
of one column. A transition is addressed by the flat index t * num_envs + env.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..objectives import importance_sampling_weights, n_step_sums, per_priorities


@dataclass
class ReplayBatch:
    """A sampled minibatch. `rewards` is the k-step sum and `discounts` = gamma^m for its bootstrap from
    `next_obs` = s_{t+m}; `terminated` says s_{t+m} is terminal. `weights` are IS weights (ones if uniform)."""
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor
    discounts: Tensor
    weights: Tensor
    indices: np.ndarray


class ReplayBuffer:
    """Uniform experience replay (Lin 1992; DQN, Mnih 2015) over the last `capacity` steps of `num_envs` envs.

    `n_step` > 1 returns k-step targets: the window after a sampled step is cut at the episode's end (termination
    or truncation) and at the newest stored step, so no sum crosses an episode or reads stale data.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], num_envs: int = 1, n_step: int = 1,
                 gamma: float = 0.99, obs_dtype=np.float32):
        if capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity must be >= 1, got {capacity}")
        if n_step < 1:
            raise ValueError(f"ReplayBuffer: n_step must be >= 1, got {n_step}")
        self.capacity = max(capacity // num_envs, 1)  # rows; each row is one step of every env
        self.num_envs, self.n_step, self.gamma = num_envs, n_step, gamma
        shape = (self.capacity, num_envs)
        self.obs = np.zeros(shape + tuple(obs_shape), dtype=obs_dtype)
        # next_obs is stored, not read from row t+1: at an episode end s_{t+1} is the final observation, while
        # row t+1 holds the first observation of the next episode (autoreset).
        self.next_obs = np.zeros(shape + tuple(obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=np.float32)
        self.dones = np.zeros(shape, dtype=np.float32)  # terminated or truncated: where k-step sums stop
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        """Number of stored transitions (all envs)."""
        return (self.capacity if self.full else self.pos) * self.num_envs

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        """Store one step of every env (arrays with leading dim num_envs); returns the flat indices written."""
        t = self.pos
        self.obs[t] = obs
        self.next_obs[t] = next_obs
        self.actions[t] = actions
        self.rewards[t] = rewards
        self.terminated[t] = terminated
        self.dones[t] = np.logical_or(terminated, truncated)
        self.pos = (t + 1) % self.capacity
        self.full = self.full or self.pos == 0
        return t * self.num_envs + np.arange(self.num_envs)

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplayBatch:
        """A uniform minibatch of `batch_size` transitions (with replacement)."""
        idx = rng.integers(0, len(self), size=batch_size)
        return self._gather(idx, np.ones(batch_size, dtype=np.float32))

    def _gather(self, idx: np.ndarray, weights: np.ndarray) -> ReplayBatch:
        t, env = np.divmod(idx, self.num_envs)
        if self.n_step == 1:
            last = t
            rewards = torch.from_numpy(self.rewards[t, env])
            discounts = torch.full_like(rewards, self.gamma)
        else:
            # Window rows t, t+1, ..., t+n-1 (mod capacity); only the `available` newest-ward rows hold this
            # env's continuation, the rest are older data about to be overwritten.
            k = np.arange(self.n_step)
            rows = (t[:, None] + k) % self.capacity
            available = (self.pos - 1 - t) % self.capacity + 1
            ends = np.logical_or(self.dones[rows, env[:, None]] > 0, k >= available[:, None] - 1)
            G, m = n_step_sums(torch.from_numpy(self.rewards[rows, env[:, None]]), torch.from_numpy(ends),
                               self.gamma)
            last = rows[np.arange(len(idx)), m.numpy() - 1]
            rewards = G
            discounts = self.gamma ** m.to(G.dtype)
        return ReplayBatch(obs=torch.from_numpy(self.obs[t, env]),
                           actions=torch.from_numpy(self.actions[t, env]),
                           rewards=rewards,
                           next_obs=torch.from_numpy(self.next_obs[last, env]),
                           terminated=torch.from_numpy(self.terminated[last, env]),
                           discounts=discounts,
                           weights=torch.from_numpy(weights),
                           indices=idx)


class SumTree:
    """Binary tree whose internal nodes hold the sum of their children; leaf i holds priority p_i (Schaul 2016,
    appendix B.2.1). Batched, vectorized O(B log N) updates and prefix-sum lookups.

    Stored as one array: node 1 is the root, node j has children 2j and 2j+1, leaves are nodes L..L+N-1 with
    L the next power of two >= N. float64 so sums over 10^5 leaves keep their precision.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.leaf0 = 1 << max(capacity - 1, 0).bit_length()
        self.nodes = np.zeros(2 * self.leaf0, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(idx) + self.leaf0]

    def update(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        """Set p_idx = priorities and recompute the sums on the paths to the root, one level at a time."""
        node = np.asarray(idx, dtype=np.int64) + self.leaf0
        self.nodes[node] = priorities
        # Recomputing each parent from its two children (instead of adding deltas) keeps no rounding drift, and
        # makes duplicate indices harmless: they write the same value.
        node = node // 2
        while node[0] >= 1:
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]
            node = node // 2

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf index i with sum_{j<i} p_j <= prefix < sum_{j<=i} p_j, for each prefix in [0, total)."""
        prefix = np.asarray(prefix, dtype=np.float64).copy()
        node = np.ones(len(prefix), dtype=np.int64)
        while node[0] < self.leaf0:
            left = self.nodes[2 * node]
            # Never step into a subtree of zero mass: a prefix within rounding of `total` would otherwise reach
            # the empty leaves past the last stored transition.
            right = (prefix >= left) & (self.nodes[2 * node + 1] > 0)
            prefix -= left * right
            node = 2 * node + right
        return node - self.leaf0


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul 2016): P(i) = p_i^alpha / sum_j p_j^alpha with p_i = |delta_i| +
    eps, sampled by stratified prefix sums on a `SumTree`, corrected by IS weights (N P(i))^-beta / max w.

    New transitions get the largest priority seen so far, so each is replayed at least about once.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], num_envs: int = 1, n_step: int = 1,
                 gamma: float = 0.99, alpha: float = 0.6, eps: float = 1e-6, obs_dtype=np.float32):
        super().__init__(capacity, obs_shape, num_envs, n_step, gamma, obs_dtype)
        if alpha < 0:
            raise ValueError(f"PrioritizedReplayBuffer: alpha must be >= 0, got {alpha}")
        self.alpha, self.eps = alpha, eps
        self.tree = SumTree(self.capacity * num_envs)
        self.max_priority = 1.0  # max p_i^alpha so far
        # New transitions enter the tree in one batched update before the next sample, not one tree walk per
        # env step: the same priorities (max_priority only changes in update_priorities, after a sample).
        self._pending: list[np.ndarray] = []

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> np.ndarray:
        idx = super().add(obs, actions, rewards, next_obs, terminated, truncated)
        self._pending.append(idx)
        return idx

    def priorities(self, idx: np.ndarray) -> np.ndarray:
        """The stored p_i^alpha of transitions `idx`."""
        self._flush()
        return self.tree[idx]

    def _flush(self) -> None:
        if self._pending:
            idx = np.concatenate(self._pending)
            self.tree.update(idx, np.full(len(idx), self.max_priority))
            self._pending.clear()

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 1.0) -> ReplayBatch:
        """`batch_size` transitions, one from each of `batch_size` equal slices of the total priority mass
        (stratified, lower variance than i.i.d.); IS weights with exponent `beta`."""
        self._flush()
        total = self.tree.total
        prefix = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        idx = self.tree.find(prefix)
        probs = torch.from_numpy(self.tree[idx] / total)
        weights = importance_sampling_weights(probs, len(self), beta).to(torch.float32)
        return self._gather(idx, weights.numpy())

    def update_priorities(self, idx: np.ndarray, td_errors: Tensor) -> None:
        """Set the priorities of the replayed transitions `idx` from their Bellman errors."""
        p = per_priorities(td_errors.detach().double(), self.alpha, self.eps).numpy()
        self._flush()
        self.tree.update(idx, p)
        self.max_priority = max(self.max_priority, float(p.max()))
