"""STRIP: inputs that carry a backdoor trigger, seen at inference (Gao et al. 2019, "STRIP: a defence
against trojan attacks on deep neural networks", arXiv:1902.06531).

Each input is superimposed on ``n_overlays`` clean reference inputs (``x + r``, clipped to the
input bounds, as the paper adds images); a clean input's
blends get varied answers (high entropy of the predicted distribution), while a trigger keeps
pulling every blend to the attacker's class (low entropy). ``fit`` learns the entropy of clean
inputs on the reference data and sets the boundary at its ``frr`` quantile (the share of clean
inputs wrongly flagged); ``update`` flags every input of a window whose mean entropy falls below
it, one alert per input with score ``boundary - entropy`` (threshold 0). The overlays are drawn
from ``seed`` and the window's number, so a recorded stream scanned offline gives the alerts that
feeding it window by window gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from bastion.core.params import Number, Params
from bastion.monitor.base import Alert, Detector


class STRIPParams(Params):
    n_overlays: int = Field(20, ge=2, description="Clean inputs blended with each input.")
    frr: Number = Field(0.01, gt=0, lt=0.5, description="Share of clean inputs flagged (false rejection rate) "
                                                        "that sets the entropy boundary.")
    seed: int = Field(0, ge=0, description="Seed of the overlays drawn.")


class STRIP(Detector):
    """Low entropy of a model's answers on blends of an input with clean ones: a trigger."""

    name = "strip"
    Params = STRIPParams

    def __init__(self, model: Any, **params: Any) -> None:
        super().__init__(**params)
        self.model = model

    def entropies(self, x: np.ndarray, reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mean entropy (nats) of the model's answers on ``n_overlays`` superimpositions of each input."""
        shape = tuple(self.model.input_spec.shape)
        x = np.asarray(x, np.float32).reshape(len(x), *shape)
        ref = np.asarray(reference, np.float32).reshape(len(reference), *shape)
        n = self.params.n_overlays  # type: ignore[attr-defined]
        picks = rng.integers(0, len(ref), (len(x), n))
        blends = self.model.input_spec.clip((x[:, None] + ref[picks]).reshape(len(x) * n, *shape))
        with self.model.uncounted():  # bastion's own measurement, not an attacker's queries
            p = np.clip(self.model.predict_proba(blends), 1e-12, 1.0)
        return (-(p * np.log(p)).sum(axis=1)).reshape(len(x), n).mean(axis=1)

    def _fit(self, reference: np.ndarray) -> Any:
        p: STRIPParams = self.params  # type: ignore[assignment]
        h = self.entropies(reference, reference, np.random.default_rng([p.seed, 2**32]))
        return {"x": reference, "boundary": float(np.quantile(h, p.frr))}

    def _initial_state(self) -> Any:
        return {"window": 0}

    def _update(self, window: np.ndarray, state: Any) -> list[Alert]:
        rng = np.random.default_rng([self.params.seed, state["window"]])  # type: ignore[attr-defined]
        state["window"] += 1
        boundary = self.reference_["boundary"]
        h = self.entropies(window, self.reference_["x"], rng)
        return [Alert(detector=self.label, score=boundary - float(h[i]), threshold=0.0, records=[int(i)],
                      message=f"entropy {h[i]:.3f} of its blends is below the clean boundary {boundary:.3f}: "
                              "the input may carry a backdoor trigger")
                for i in np.flatnonzero(h < boundary)]
