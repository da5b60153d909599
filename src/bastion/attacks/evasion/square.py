"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", arXiv:1912.00049), L∞ and L2.

Score-based random search: each iteration changes the perturbation on one random square (images)
or one random subset of features (tables), keeps the change if the margin loss went down, and
shrinks the square on the paper's schedule. Candidates are scored by the margin of the
log-probabilities (``Target.predict_log_proba``: from the logits in float64 where the target has
them, so a model with saturated float32 probabilities keeps its margins; the log of the
probabilities for HTTP and other probability-only targets). Batched over samples: one query per iteration for
every sample still robust; each sample stops at ``max_queries``.
"""

from __future__ import annotations

import numpy as np

from pydantic import Field

from bastion.attacks.base import AttackRun, register_attack
from bastion.attacks.evasion._blackbox import Box, QueryAttack, QueryAttackParams, margins
from bastion.core.run import SampleStreams
from bastion.core.targets.base import Target
from bastion.errors import BastionRuntimeError, TargetError

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of features changed at iteration ``it``: halved at the paper's iterations
    (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000), rescaled to ``n_iters``."""
    it = int(it / n_iters * 10000) if n_iters != 10000 else it
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def _pseudo_gaussian(h: int, w: int) -> np.ndarray:
    """Concentric rectangles weighted 1/(k+1)^2 around the centre, unit L2 norm (paper, App. C)."""
    out = np.zeros((h, w))
    ch, cw = h // 2, w // 2
    for k in range(max(ch, cw) + 1):
        out[max(ch - k, 0):min(ch + k + 1, h), max(cw - k, 0):min(cw + k + 1, w)] += 1.0 / (k + 1) ** 2
    return out / np.linalg.norm(out)


def l2_square_pattern(s: int) -> np.ndarray:
    """The L2 update of the paper: two halves of opposite sign, each a pseudo-Gaussian bump."""
    out = np.zeros((s, s))
    out[:s // 2] = _pseudo_gaussian(s // 2, s)
    out[s // 2:] = -_pseudo_gaussian(s - s // 2, s)
    return out / np.linalg.norm(out)


class SquareParams(QueryAttackParams):
    p_init: float = Field(0.8, gt=0, le=1, description="Initial fraction of features changed per step.")


@register_attack
class Square(QueryAttack):
    """Square Attack: score-based black-box attack, L∞ or L2 ball of radius ``eps`` (ε units).

    ``max_queries`` per sample (default 1000), ``p_init`` the initial fraction of features changed
    per step (0.8 as in AutoAttack). Refuses label-only targets: use ``hopskipjump`` there.

    >>> import bastion
    >>> attack = bastion.attacks.Square(eps=0.1, norm="linf", max_queries=1000)
    """

    name = "square"

    Params = SquareParams

    # --- geometry of one update -----------------------------------------------------------------
    def _layout(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """(channels, height, width) when squares make sense, else None (vector mode)."""
        if len(shape) == 3 and min(shape[1:]) >= 2:
            return shape[0], shape[1], shape[2]
        if len(shape) == 2 and min(shape) >= 2:
            return 1, shape[0], shape[1]
        return None

    @staticmethod
    def _window(n: int, c: int, h: int, w: int, s: int, rng: SampleStreams) -> tuple[np.ndarray, ...]:
        """A random s×s window per sample: boolean mask (n, c, h, w) and its corners."""
        r0 = rng.integers(h - s + 1)
        c0 = rng.integers(w - s + 1)
        rows, cols = np.arange(h), np.arange(w)
        in_r = (rows >= r0[:, None]) & (rows < r0[:, None] + s)
        in_c = (cols >= c0[:, None]) & (cols < c0[:, None] + s)
        m = in_r[:, :, None] & in_c[:, None, :]
        return np.broadcast_to(m[:, None], (n, c, h, w)), r0, c0

    @staticmethod
    def _place(pattern: np.ndarray, r0: np.ndarray, c0: np.ndarray, h: int, w: int) -> np.ndarray:
        """``pattern`` (n, s, s) put at each sample's corner in an (n, h, w) zero image."""
        n, s = len(pattern), pattern.shape[1]
        ri = np.arange(h)[None, :] - r0[:, None]
        ci = np.arange(w)[None, :] - c0[:, None]
        inside = ((ri >= 0) & (ri < s))[:, :, None] & ((ci >= 0) & (ci < s))[:, None, :]
        rr, cc = np.clip(ri, 0, s - 1)[:, :, None], np.clip(ci, 0, s - 1)[:, None, :]
        vals = pattern[np.arange(n)[:, None, None], rr, cc]
        return np.where(inside, vals, 0.0)

    # --- the attack ------------------------------------------------------------------------------
    def _search(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray, run: AttackRun,
                fooled_at: np.ndarray, spent: np.ndarray) -> np.ndarray:
        if target.label_only:
            raise TargetError(f"the square attack needs class scores but target '{target.name}' returns labels only",
                              hint="use a decision-based attack: hopskipjump")
        streams = run.streams(rows, "square")
        box, spec = Box.of(target), target.input_spec
        x0 = x.astype(np.float64)
        n, shape = len(x0), x0.shape[1:]
        layout = self._layout(shape)
        eps = self.eps

        def evaluate(delta: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            xa = spec.enforce(x0[idx], box.apply(x0[idx], delta)).astype(np.float64)
            spent[idx] += 1
            return xa, margins(target.predict_log_proba(xa.astype(np.float32)), goal[idx], self.targeted)

        best_x = x0.copy()
        try:
            delta = self._init_delta(n, shape, layout, eps, box.mask, streams.at(0))
            best_delta = delta
            best_x, best_m = evaluate(delta, np.arange(n))
            fooled_at[best_m < 0] = 1
            for it in range(1, self.max_queries):
                idx = np.flatnonzero(best_m >= 0)
                if len(idx) == 0:
                    break
                p = p_schedule(self.p_init, it, self.max_queries)
                cand = self._propose(best_delta[idx], x0[idx], best_x[idx], box, layout, p, eps,
                                     streams.at(it).subset(idx))
                xa, m = evaluate(cand, idx)
                better = m < best_m[idx]
                keep = idx[better]
                best_delta[keep], best_x[keep], best_m[keep] = cand[better], xa[better], m[better]
                fooled_at[keep[m[better] < 0]] = it + 1
        except BastionRuntimeError as exc:
            self.halt(run, exc, best_x.astype(np.float32))
        return best_x.astype(np.float32)

    def _init_delta(self, n: int, shape: tuple[int, ...], layout: tuple[int, int, int] | None, eps: float,
                    mask: np.ndarray, rng: SampleStreams) -> np.ndarray:
        if self.norm == "linf":
            if layout is not None:  # vertical stripes of ±eps, as in the paper
                c, h, w = layout
                stripes = rng.signs((c, 1, w)) * eps
                return np.broadcast_to(stripes, (n, c, h, w)).reshape(n, *shape) * mask
            return rng.signs(shape) * eps * mask
        if layout is not None:  # a grid of pseudo-Gaussian bumps with random signs
            c, h, w = layout
            s = max(h // 5, 1)
            delta = np.zeros((n, c, h, w))
            bump = _pseudo_gaussian(s, s)
            for r in range(0, h - s + 1, s):
                for q in range(0, w - s + 1, s):
                    delta[:, :, r:r + s, q:q + s] += bump * rng.signs((c, 1, 1))
            delta = delta.reshape(n, *shape)
        else:
            delta = rng.normal(shape)
        delta = delta * mask
        norm = np.linalg.norm(delta.reshape(n, -1), axis=1).clip(1e-12)
        return delta / norm.reshape(-1, *([1] * len(shape))) * eps

    def _propose(self, delta: np.ndarray, x0: np.ndarray, xb: np.ndarray, box: Box,
                 layout: tuple[int, int, int] | None, p: float, eps: float, rng: SampleStreams) -> np.ndarray:
        n, shape = len(delta), delta.shape[1:]
        d = int(np.prod(shape))
        # the perturbation actually applied (after clipping to the bounds), in ε units
        cur = np.where(box.mask > 0, (xb - x0) / box.scale, 0.0)
        if self.norm == "linf":
            if layout is not None:
                c, h, w = layout
                s = int(np.clip(round(np.sqrt(p * d / c)), 1, min(h, w) - 1))
                win, _, _ = self._window(n, c, h, w, s, rng)
                cur4 = cur.reshape(n, c, h, w)
                signs = rng.signs((c, 1, 1)) * eps
                same = np.all(np.where(win, np.isclose(cur4, signs), True), axis=(1, 2, 3))
                signs[same] = -signs[same]  # a window that would not change gets the opposite signs
                new = np.where(win, signs, cur4).reshape(n, *shape)
            else:
                k = int(np.clip(round(p * d), 1, d))
                pick = np.argsort(rng.uniform((d,)), axis=1)[:, :k]
                flat = cur.reshape(n, d).copy()
                flat[np.arange(n)[:, None], pick] = rng.signs((k,)) * eps
                new = flat.reshape(n, *shape)
            return new * box.mask
        # L2: move mass from a second window into a fresh pseudo-Gaussian update on the first
        flat_cur = cur.reshape(n, -1)
        if layout is not None:
            c, h, w = layout
            s = int(np.clip(round(np.sqrt(p * d / c)), 3, max(min(h, w) - 1, 1)))
            s = min(s + (s % 2 == 0), min(h, w))
            win1, r1, c1 = self._window(n, c, h, w, s, rng)
            win2, _, _ = self._window(n, c, h, w, s, rng)
            cur4 = cur.reshape(n, c, h, w)
            pat = np.stack([l2_square_pattern(s)] * n)
            flip = rng.uniform() < 0.5
            pat[flip] = pat[flip].transpose(0, 2, 1)
            placed = self._place(pat, r1, c1, h, w)[:, None] * rng.signs((c, 1, 1))
            axes: tuple[int, ...] = (2, 3)
            old_w1 = np.where(win1, cur4, 0.0)
            both = win1 | win2
            full, ch = cur4, c
        else:
            k = int(np.clip(round(p * d), 1, d))
            pick1 = np.argsort(rng.uniform((d,)), axis=1)[:, :k]
            pick2 = np.argsort(rng.uniform((d,)), axis=1)[:, :k]
            win1 = np.zeros((n, d), bool)
            win1[np.arange(n)[:, None], pick1] = True
            win2 = np.zeros((n, d), bool)
            win2[np.arange(n)[:, None], pick2] = True
            placed = np.where(win1, rng.normal((d,)), 0.0)
            placed /= np.linalg.norm(placed, axis=1, keepdims=True).clip(1e-12)
            axes, full, ch = (1,), flat_cur, 1
            old_w1 = np.where(win1, flat_cur, 0.0)
            both = win1 | win2
        mask_full = np.broadcast_to(box.mask, (n, *shape)).reshape(full.shape)
        placed = placed * mask_full
        norm_w1 = np.sqrt((old_w1 ** 2).sum(axis=axes, keepdims=True))
        norm_both = np.sqrt((np.where(both, full, 0.0) ** 2).sum(axis=axes, keepdims=True))
        norm_img = np.linalg.norm(flat_cur, axis=1).reshape(-1, *([1] * (full.ndim - 1)))
        upd = placed + old_w1 / (norm_w1 + 1e-10)
        upd = np.where(win1, upd, 0.0)
        upd_norm = np.sqrt((upd ** 2).sum(axis=axes, keepdims=True)).clip(1e-12)
        budget = np.sqrt(np.maximum(eps ** 2 - norm_img ** 2, 0.0) / ch + norm_both ** 2)
        new = np.where(win2, 0.0, full)
        new = np.where(win1, upd / upd_norm * budget, new).reshape(n, -1)
        new = new * box.mask.reshape(1, -1)
        nn = np.linalg.norm(new, axis=1, keepdims=True).clip(1e-12)
        new = new / nn * eps
        return new.reshape(n, *shape)
