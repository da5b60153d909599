"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020, "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack", arXiv:1904.02144), L2 and L∞.

Decision-based: only the predicted label is used. From an adversarial starting point, each
iteration (1) binary-searches the boundary between the input and the current adversarial point,
(2) estimates the boundary's normal from the labels of ``100·sqrt(t)`` random probes, (3) steps
along it with a geometrically shrinking step and searches the boundary again. A minimal-
perturbation attack: it reports the distribution of the smallest perturbation it found. Batched
over samples; each sample stops at ``max_queries`` label queries.
"""

from __future__ import annotations

import numpy as np

from pydantic import Field, ValidationInfo, field_validator

from bastion.attacks.base import MAX_QUERIES, AttackRun, register_attack
from bastion.attacks.evasion._blackbox import Box, QueryAttack, QueryAttackParams
from bastion.core.params import Eps, Norm
from bastion.core.targets.base import Target
from bastion.errors import BastionRuntimeError

_CHUNK = 1 << 23  # floats per gradient-estimation chunk (memory bound)


class HopSkipJumpParams(QueryAttackParams):
    eps: Eps = Field(0.0, description="Ignored: a minimal-perturbation attack.")
    norm: Norm = Field("l2", description="Norm of the perturbation: l2 or linf.")
    init_evals: int = Field(100, ge=1, le=MAX_QUERIES, description="Probes of the first gradient estimate.")
    max_evals: int = Field(10000, ge=1, le=MAX_QUERIES, description="Most probes of one gradient estimate.")
    gamma: float = Field(1.0, gt=0, description="Binary-search precision θ = γ/d^{3/2} (L2) or γ/d² (L∞).")
    init_trials: int = Field(50, ge=1, le=10_000, description="Random draws to find a first adversarial point.")

    @field_validator("max_evals")
    @classmethod
    def _evals(cls, v: int, info: ValidationInfo) -> int:
        if v < info.data.get("init_evals", 1):
            raise ValueError(f"need init_evals <= max_evals (init_evals={info.data['init_evals']})")
        return v


@register_attack
class HopSkipJump(QueryAttack):
    """HopSkipJump: decision-based minimal-perturbation attack (L2 or L∞, in ε units).

    ``max_queries`` label queries per sample (default 1000); ``init_evals`` probes for the first
    gradient estimate (growing as sqrt(t)), at most ``max_evals``; ``gamma`` sets the binary-search
    precision θ = γ/d^{3/2} (L2) or γ/d² (L∞); ``init_trials`` random draws to find a first
    adversarial point (uniform noise and other inputs of the batch).

    >>> import bastion
    >>> attack = bastion.attacks.HopSkipJump(norm="l2", max_queries=1000)
    """

    name = "hopskipjump"
    minimal = True

    Params = HopSkipJumpParams

    # --- helpers in ε units (z = x / scale) ------------------------------------------------------
    def _dist(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        diff = (a - b).reshape(len(a), -1)
        return np.abs(diff).max(axis=1) if self.norm == "linf" else np.linalg.norm(diff, axis=1)

    def _project(self, z0: np.ndarray, z: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The point at ``alpha`` between ``z0`` (0) and ``z`` (1): a blend (L2) or an L∞ box of
        radius ``alpha`` around ``z0`` (L∞)."""
        a = alpha.reshape(-1, *([1] * (z.ndim - 1)))
        if self.norm == "l2":
            return (1 - a) * z0 + a * z
        return np.clip(z, z0 - a, z0 + a)

    def _search(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray, run: AttackRun,
                fooled_at: np.ndarray, spent: np.ndarray) -> np.ndarray:
        init, probes = run.streams(rows, "init"), run.streams(rows, "probes")
        box, spec = Box.of(target), target.input_spec
        sc, mask = box.scale, box.mask
        zlo, zhi = box.lo / sc, box.hi / sc
        z0 = x.astype(np.float64) / sc
        n, shape = len(z0), z0.shape[1:]
        d = int(np.prod(shape))
        theta = self.gamma / (d ** 1.5 if self.norm == "l2" else d ** 2)
        best = z0.copy()
        found = np.zeros(n, bool)

        def left(idx: np.ndarray) -> np.ndarray:
            return self.max_queries - spent[idx]

        def is_adv(z: np.ndarray, owner: np.ndarray) -> np.ndarray:
            """Labels of ``z`` (owned by samples ``owner``): True where adversarial."""
            if len(z) == 0:
                return np.zeros(0, bool)
            xq = spec.enforce(x[owner], np.clip(z, zlo, zhi) * sc)  # decide on the point actually sent
            pred = target.predict_proba(np.asarray(xq, np.float32)).argmax(axis=1)
            np.add.at(spent, owner, 1)
            return (pred == goal[owner]) if self.targeted else (pred != goal[owner])

        try:
            found, best = self._initialise(z0, zlo, zhi, mask, init, is_adv, left, run.x / sc)
            fooled_at[found] = spent[found]
            idx = np.flatnonzero(found)
            if len(idx):
                best[idx] = self._boundary(z0[idx], best[idx], idx, theta, is_adv, left)
            dist = self._dist(best, z0)
            for t in range(1, 10 ** 6):
                idx = np.flatnonzero(found & (left(np.arange(n)) > 2))
                if len(idx) == 0:
                    break
                n_evals = min(int(self.init_evals * np.sqrt(t)), self.max_evals)
                reserve = int(np.ceil(np.log2(1.0 / theta))) + 4
                k = np.minimum(n_evals, left(idx) - reserve)
                idx, k = idx[k >= 4], k[k >= 4]
                if len(idx) == 0:
                    break
                zb, dz = best[idx], dist[idx]
                delta = (np.sqrt(d) if self.norm == "l2" else d) * theta * dz
                grad = self._gradient(zb, delta, k, idx, zlo, zhi, mask, probes.at(t).subset(idx), is_adv)
                update = grad if self.norm == "l2" else np.sign(grad)
                step = dz / np.sqrt(t)
                cand = zb.copy()
                todo = np.ones(len(idx), bool)
                for _ in range(25):  # geometric step-size search: halve until adversarial
                    todo &= left(idx) > 0
                    sel = np.flatnonzero(todo)
                    if len(sel) == 0:
                        break
                    trial = np.clip(zb[sel] + step[sel].reshape(-1, *([1] * len(shape))) * update[sel], zlo, zhi)
                    ok = is_adv(trial, idx[sel])
                    cand[sel[ok]] = trial[ok]
                    todo[sel[ok]] = False
                    step[sel[~ok]] /= 2
                moved = ~todo & (self._dist(cand, zb) > 0)
                if moved.any():
                    mi = idx[moved]
                    new = self._boundary(z0[mi], cand[moved], mi, theta, is_adv, left)
                    nd = self._dist(new, z0[mi])
                    better = nd < dist[mi]
                    best[mi[better]], dist[mi[better]] = new[better], nd[better]
        except BastionRuntimeError as exc:
            self.halt(run, exc, spec.enforce(x, np.clip(best, zlo, zhi) * sc))
        return spec.enforce(x, np.clip(best, zlo, zhi) * sc)

    def _initialise(self, z0, zlo, zhi, mask, rng, is_adv, left, pool):  # noqa: ANN001, ANN202
        """A first adversarial point per sample: uniform noise in the bounds, or another input of
        the run (``pool``, blended with noise), whichever is classified adversarially first."""
        n = len(z0)
        found = np.zeros(n, bool)
        start = z0.copy()
        lo = np.broadcast_to(np.where(np.isfinite(zlo), zlo, z0 - 3.0), z0.shape)
        hi = np.broadcast_to(np.where(np.isfinite(zhi), zhi, z0 + 3.0), z0.shape)
        for trial in range(self.init_trials):
            idx = np.flatnonzero(~found & (left(np.arange(n)) > 0))
            if len(idx) == 0:
                break
            draw = rng.at(trial).subset(idx)
            noise = lo[idx] + (hi - lo)[idx] * draw.uniform(z0.shape[1:])
            if trial % 2 == 1 and len(pool) > 1:
                other = pool[draw.integers(len(pool))]
                w = 0.3 * draw.uniform((*([1] * (z0.ndim - 1)),))
                noise = (1 - w) * other + w * noise
            cand = np.where(mask > 0, noise, z0[idx])
            ok = is_adv(cand, idx)
            start[idx[ok]], found[idx[ok]] = cand[ok], True
        # shrink each start toward the input along the blend line before the first iteration
        idx = np.flatnonzero(found)
        if len(idx):
            lo_a, hi_a = np.zeros(len(idx)), np.ones(len(idx))
            for _ in range(10):
                sel = np.flatnonzero(left(idx) > 0)
                if len(sel) == 0:
                    break
                mid = (lo_a[sel] + hi_a[sel]) / 2
                a = mid.reshape(-1, *([1] * (z0.ndim - 1)))
                ok = is_adv((1 - a) * z0[idx[sel]] + a * start[idx[sel]], idx[sel])
                hi_a[sel[ok]], lo_a[sel[~ok]] = mid[ok], mid[~ok]
            a = hi_a.reshape(-1, *([1] * (z0.ndim - 1)))
            start[idx] = (1 - a) * z0[idx] + a * start[idx]
        return found, start

    def _boundary(self, z0, z_adv, owner, theta, is_adv, left):  # noqa: ANN001, ANN202
        """Binary search between ``z0`` (robust) and ``z_adv`` (adversarial); returns adversarial
        points within θ of the boundary (in blend ratio for L2, in L∞ radius for L∞)."""
        if self.norm == "l2":
            lo, hi = np.zeros(len(z0)), np.ones(len(z0))
            thr = np.full(len(z0), theta)
        else:
            lo, hi = np.zeros(len(z0)), self._dist(z_adv, z0)
            thr = np.minimum(hi * theta, theta)
        for _ in range(64):
            sel = np.flatnonzero((hi - lo > thr) & (left(owner) > 0))
            if len(sel) == 0:
                break
            mid = (lo[sel] + hi[sel]) / 2
            ok = is_adv(self._project(z0[sel], z_adv[sel], mid), owner[sel])
            hi[sel[ok]], lo[sel[~ok]] = mid[ok], mid[~ok]
        return self._project(z0, z_adv, hi)

    def _gradient(self, zb, delta, k, owner, zlo, zhi, mask, rng, is_adv):  # noqa: ANN001, ANN202
        """Monte-Carlo estimate of the boundary normal at ``zb`` from ``k[i]`` probes per sample
        (baseline-corrected, Chen et al. eq. 16); unit L2 norm."""
        n, shape = len(zb), zb.shape[1:]
        d = int(np.prod(shape))
        grad = np.zeros_like(zb)
        per = max(1, _CHUNK // max(int(k.max()) * d, 1))
        for s in range(0, n, per):
            sl = slice(s, s + per)
            kk, K = k[sl], int(k[sl].max())
            m = len(kk)
            draw = rng.subset(np.arange(s, s + m))
            rv = (draw.normal((K, *shape)) if self.norm == "l2" else draw.uniform((K, *shape)) * 2 - 1) * mask
            rv /= np.linalg.norm(rv.reshape(m, K, -1), axis=2).clip(1e-12).reshape(m, K, *([1] * len(shape)))
            dl = delta[sl].reshape(m, 1, *([1] * len(shape)))
            probe = np.clip(zb[sl, None] + dl * rv, zlo, zhi)
            rv = (probe - zb[sl, None]) / np.maximum(dl, 1e-12)
            valid = np.arange(K)[None, :] < kk[:, None]
            r_i, c_i = np.nonzero(valid)
            phi = np.zeros((m, K))
            phi[r_i, c_i] = np.where(is_adv(probe[r_i, c_i], owner[sl][r_i]), 1.0, -1.0)
            mean = phi.sum(axis=1) / kk
            centred = np.where(np.abs(mean)[:, None] == 1.0, phi, phi - mean[:, None]) * valid
            g = (centred.reshape(m, K, *([1] * len(shape))) * rv).sum(axis=1) / kk.reshape(-1, *([1] * len(shape)))
            grad[sl] = g
        norm = np.linalg.norm(grad.reshape(n, -1), axis=1).clip(1e-12)
        return grad / norm.reshape(-1, *([1] * len(shape)))
