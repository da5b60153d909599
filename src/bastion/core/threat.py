"""ThreatModel: what the attacker knows and may do — the one home of knowledge, norm and ε, query
budget, targeting and poison fraction. What the attacker may change (which features, within which
bounds) is the target's input spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from bastion.core.params import NORMS, Eps, Norm, Number, Params, param_error

Knowledge = Literal["white", "grey", "black"]
__all__ = ["NORMS", "Knowledge", "Norm", "ThreatModel"]


class ThreatModel(Params):
    """Knowledge (white: weights and gradients; grey: scores; black: labels or scores through an API),
    norm and ε (in each feature's own scale), query budget (inputs the attacker may send), targeted
    or not, and the fraction of the training data a poisoning attacker controls."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise param_error("threat model", ThreatModel, exc) from None

    knowledge: Knowledge = Field("white", description="What the attacker knows: white, grey or black box.")
    norm: Norm = Field("linf", description="Norm of the perturbation: linf or l2.")
    eps: Eps = Field(0.1, description="Perturbation budget ε, in each feature's scale.")
    query_budget: int | None = Field(None, gt=0, description="Inputs the attacker may send (None: no limit).")
    targeted: bool = Field(False, description="The attacker aims at a chosen class.")
    poisoning_fraction: Number = Field(0.0, ge=0.0, lt=1.0,
                                       description="Fraction of the training data the attacker controls.")

    @property
    def allows_gradients(self) -> bool:
        return self.knowledge == "white"
