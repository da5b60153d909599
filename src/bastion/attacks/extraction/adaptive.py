"""Knockoff Nets' adaptive query selection (Orekondy, Schiele & Fritz 2019, "Knockoff Nets:
Stealing Functionality of Black-Box Models", CVPR, arXiv:1812.02766, Sec. 4.1.2).

The attacker's natural data is split into groups (its own labels, or k-means clusters when it has
none; the paper walks a class hierarchy, this is its one-level form). A gradient-bandit policy
π(z) = softmax(H)(z) picks a group per query; an unused input of that group is sent, the knockoff
takes one optimisation step per batch of answers, and each reward updates the preferences:
H(z_t) += α (r_t − r̄)(1 − π(z_t)), H(z) −= α (r_t − r̄) π(z) for z ≠ z_t, with a constant step α
and r̄ the mean of the earlier rewards (Sutton & Barto, "Reinforcement Learning", Sec. 2.8; ART's
version steps by 1/N(z_t) instead). The paper's three rewards:
certainty (top-1 minus top-2 answer probability), diversity (Σ_k max(0, y_k − ȳ_k), ȳ the mean
answer of the last ``window`` queries) and loss (the knockoff's cross-entropy on the answer before
it learns it); each is standardised by its running mean and deviation, ``all`` averages the three.
Queries are sent ``step`` at a time (one request each), the policy updated after each answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Reward = Literal["certainty", "diversity", "loss", "all"]
REWARDS: tuple[str, ...] = ("certainty", "diversity", "loss")


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
    """Cluster indices of the rows of ``x`` (flattened): Lloyd's algorithm from a k-means++ start
    (Arthur & Vassilvitskii 2007), seeded. ``k`` is capped at the number of rows."""
    import torch

    z = torch.as_tensor(np.asarray(x, np.float32).reshape(len(x), -1))
    k, gen = min(k, len(z)), torch.Generator().manual_seed(seed)
    centres = z[torch.randint(len(z), (1,), generator=gen)]
    for _ in range(k - 1):
        d = torch.cdist(z, centres).min(1).values ** 2
        p = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1 / len(d))
        centres = torch.cat([centres, z[torch.multinomial(p, 1, generator=gen)]])
    for _ in range(iterations):
        assign = torch.cdist(z, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k)[:, None]
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty cluster stays put
        if torch.allclose(moved, centres):
            break
        centres = moved
    return torch.cdist(z, centres).argmin(1).numpy()


class GradientBandit:
    """The policy over groups: preferences H, mean reward r̄; groups run dry drop out."""

    def __init__(self, sizes: np.ndarray, alpha: float) -> None:
        self.alpha = alpha
        self.h = np.zeros(len(sizes))
        self.left = np.asarray(sizes, float).copy()
        self.mean, self.seen = 0.0, 0

    def policy(self) -> np.ndarray:
        """π over the groups with inputs left (0 for the others)."""
        e = np.where(self.left > 0, np.exp(self.h - self.h[self.left > 0].max()), 0.0)
        return e / e.sum()

    def choose(self, rng: np.random.Generator) -> int:
        z = int(rng.choice(len(self.h), p=self.policy()))
        self.left[z] -= 1
        return z

    def update(self, z: int, reward: float) -> None:
        pi = self.policy() if self.left.sum() > 0 else np.full(len(self.h), 1 / len(self.h))
        grad = -pi
        grad[z] += 1.0
        self.h += self.alpha * (reward - self.mean) * grad
        self.seen += 1
        self.mean += (reward - self.mean) / self.seen


class Standardiser:
    """Running mean and variance of each reward (Welford, per column): a batch of rewards is added,
    then scored against every reward so far (0 while they do not vary)."""

    def __init__(self, n: int) -> None:
        self.count, self.mean, self.m2 = 0, np.zeros(n), np.zeros(n)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        for r in rows:
            self.count += 1
            delta = r - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (r - self.mean)
        std = np.sqrt(self.m2 / self.count)
        return np.divide(rows - self.mean, std, out=np.zeros_like(rows), where=std > 1e-12)


class AdaptiveSampler:
    """One run's adaptive selection: ``draw(n, ask)`` sends ``n`` inputs chosen by the policy through
    ``ask`` (inputs -> answers as probability rows) and returns their indices and answers."""

    def __init__(self, pool: np.ndarray, groups: np.ndarray, reward: Reward, window: int, step: int, alpha: float,
                 learner: OnlineLearner, rng: np.random.Generator) -> None:
        _, self.group, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        self.members = [rng.permutation(np.flatnonzero(self.group == g)).tolist() for g in range(len(sizes))]
        self.pool, self.window, self.step, self.learner, self.rng = pool, window, step, learner, rng
        self.use = [REWARDS.index(r) for r in (REWARDS if reward == "all" else (reward,))]
        self.bandit, self.scale, self.recent = GradientBandit(sizes, alpha), Standardiser(len(REWARDS)), []

    def draw(self, n: int, ask: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        picked, answers = [], []
        for start in range(0, n, self.step):
            chosen = [self.bandit.choose(self.rng) for _ in range(min(self.step, n - start))]
            idx = np.array([self.members[z].pop() for z in chosen])
            y = ask(self.pool[idx])
            losses = self.learner.step(self.pool[idx], y)  # the knockoff's loss before it learns the answers
            rewards = []
            for yi, li in zip(y, losses, strict=True):
                rewards.append(self._rewards(yi, li))
                self.recent = (self.recent + [yi])[-self.window:]
            for z, r in zip(chosen, self.scale(np.array(rewards))[:, self.use].mean(1), strict=True):
                self.bandit.update(z, float(r))
            picked.append(idx)
            answers.append(y)
        return np.concatenate(picked), np.concatenate(answers)

    def _rewards(self, y: np.ndarray, loss: float) -> np.ndarray:
        top = np.sort(y)[-2:]
        mean = np.mean(self.recent, axis=0) if self.recent else np.zeros_like(y)
        return np.array([top[-1] - top[0], np.maximum(y - mean, 0).sum(), loss])


class OnlineLearner:
    """The knockoff trained along the way, one optimisation step per batch of answers (what the
    loss reward reads): the module, optimiser and loss of the attack's training procedure."""

    def __init__(self, procedure: Any, seed: int) -> None:
        import torch

        from bastion.core.training import init_weights

        with torch.random.fork_rng(devices=[]):
            self.module = procedure.model()
        init_weights(self.module, torch.Generator().manual_seed(seed))
        self.module.train()
        self.opt, self.loss = procedure.optimizer(self.module.parameters()), procedure.loss

    def step(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        import torch

        self.opt.zero_grad()
        losses = self.loss(self.module(torch.as_tensor(np.asarray(x, np.float32))),
                           torch.as_tensor(np.asarray(y, np.float32)))
        losses.mean().backward()
        self.opt.step()
        return losses.detach().numpy()
