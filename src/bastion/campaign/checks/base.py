"""The Check contract: a named, parameterised unit of a scan that returns a CheckResult.

A check kind is registered by name (``@register_check``); its parameters are a pydantic model, so
a policy file is validated field by field before anything runs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.campaign.gates import GateView
from bastion.core.data import Dataset
from bastion.core.registry import Registry
from bastion.core.results import CheckResult
from bastion.core.targets.base import Target

log = logging.getLogger(__name__)

# progress(description, total) -> context manager yielding an advance(n) callable
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside a check that kept a partial result: the scan records it, then stops."""

    def __init__(self, partial: CheckResult) -> None:
        super().__init__("interrupted")
        self.partial = partial


class CheckParams(BaseModel):
    """Base of every check's parameters: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class AttackChoice(CheckParams):
    """``{attack: NAME, params: {...}}`` naming an entry of the subclass's ``registry`` (``what`` names
    the family in the error, e.g. "membership attack")."""

    registry: ClassVar[Any]
    what: ClassVar[str] = "attack"
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("attack")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in cls.registry:
            raise ValueError(f"unknown {cls.what} '{v}'; available: {', '.join(cls.registry)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        """A bare name stands for ``{attack: NAME}``."""
        return {"attack": v} if isinstance(v, str) else v


def _at_least_one(v: list[Any]) -> list[Any]:
    if not v:
        raise ValueError("give at least one attack, or leave the field out for the default")
    return v


ChoiceT = TypeVar("ChoiceT", bound=AttackChoice)
AttackList = Annotated[list[ChoiceT], AfterValidator(_at_least_one)]
"""A non-empty list of attack choices, each a name or ``{attack: NAME, params: {...}}``."""


class CheckInputError(ValueError):
    """A check parameter that fails a check made when the policy loads (a missing file...);
    ``loc`` is the field's path inside the check, e.g. ``("paths", 1)``."""

    def __init__(self, loc: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


class CheckFailed(Exception):
    """A check that could not finish (its model or endpoint failed) and kept what it measured:
    the scan records the partial result with status ``error`` and goes on with the next check."""

    def __init__(self, partial: CheckResult) -> None:
        super().__init__(partial.reason or "check failed")
        self.partial = partial


def stopped_by_failure(res: Any) -> bool:
    """Whether an attack result stopped early because the model or endpoint failed (not a query
    budget, not Ctrl-C): what it measured is not a measurement of the model's robustness."""
    return not res.complete and not res.interrupted and (res.reason or "").startswith("stopped early")


@dataclass
class CheckContext:
    """What a check may use: the target, the data (with labels as class indices), the seed, a
    progress factory and a scratch directory."""

    target: Target | None
    data: Dataset | None
    y: np.ndarray | None
    seed: int = 0
    out_dir: Path | None = None
    progress: ProgressFactory | None = None
    policy_dir: Path = field(default_factory=Path.cwd)
    options: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)  # policy v2 roles besides eval: train, holdout...
    trainer: Any = None  # policy v2: a TrainFn (bastion.core.training)
    prepared: dict[str, Any] = field(default_factory=dict)  # what a check's prepare built, by check name, for its run

    def require_model(self, check: str) -> tuple[Target, Dataset, np.ndarray]:
        from bastion.errors import UsageError

        if self.target is None or self.data is None or self.y is None:
            raise UsageError(f"check '{check}' needs a target and data in the policy")
        return self.target, self.data, self.y

    def bar(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        if self.progress is None:
            from contextlib import nullcontext

            return nullcontext(lambda n: None)
        return self.progress(description, total)


class Check(ABC):
    """A check kind. Subclasses set ``kind``, ``Params`` and implement ``run``."""

    kind: ClassVar[str] = ""
    Params: ClassVar[type[CheckParams]] = CheckParams
    needs_model: ClassVar[bool] = True
    metric_names: ClassVar[frozenset[str] | None] = None  # what gates may read; None: not declared

    def __init__(self, name: str, params: CheckParams) -> None:
        self.name, self.params = name, params

    requires: ClassVar[frozenset[str]] = frozenset()  # e.g. {"gradients"}; see requirements()
    threat_fields: ClassVar[tuple[str, ...]] = ()  # parameters a policy's threat section fills in

    @classmethod
    def threat_params(cls, threat: dict[str, Any]) -> dict[str, Any]:
        """The parameters this check takes from a policy's threat (v2), e.g. eps and norm."""
        return {k: v for k, v in threat.items() if k in cls.threat_fields}

    def requirements(self) -> frozenset[str]:
        """What this check needs from the policy's resources: ``gradients`` (a white-box target and
        threat), ``trainer``, or a dataset role (``train``, ``holdout``, ...). Checked when the policy
        loads (gradients again once the target is loaded), before anything runs."""
        return self.requires

    def validate_inputs(self, policy_dir: Path) -> None:
        """Checks that need the file system (files named by parameters exist); raise CheckInputError."""

    def prepare(self, ctx: CheckContext) -> None:
        """Checks that need the loaded target and data (a model file a parameter names loads and fits
        the target), run once they are loaded and before any check runs: a UsageError raised here
        stops the scan as a user error (exit 2) instead of recording the check as errored."""

    def gate_view(self) -> GateView:
        """What gates can select and read from this check's results (checked when the policy loads)."""
        return GateView(self.name, frozenset({self.name, self.kind}), self.metric_names,
                        {"check": frozenset({self.name}), "kind": frozenset({self.kind})})

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckResult:
        """Run the check; raise BastionError subclasses for user mistakes."""


CHECKS: Registry[type[Check]] = Registry("check", {
    "evasion": "bastion.campaign.checks.evasion:EvasionCheck",
    "gradient-masking": "bastion.campaign.checks.gradient_masking:GradientMaskingCheck",
    "defense-eval": "bastion.campaign.checks.defense_eval:DefenseEvalCheck",
    "detector-eval": "bastion.campaign.checks.detector_eval:DetectorEvalCheck",
    "membership": "bastion.campaign.checks.membership:MembershipCheck",
    "attribute-inference": "bastion.campaign.checks.attribute:AttributeInferenceCheck",
    "model-inversion": "bastion.campaign.checks.inversion:ModelInversionCheck",
    "extraction": "bastion.campaign.checks.extraction:ExtractionCheck",
    "model-file": "bastion.campaign.checks.model_file:ModelFileCheck",
    "audit-data": "bastion.campaign.checks.audit_data:AuditDataCheck",
    "certify": "bastion.campaign.checks.certify:CertifyCheck",
    "variants": "bastion.campaign.checks.variants:VariantsCheck",
    "poisoning": "bastion.campaign.checks.poisoning:PoisoningCheck",
    "privacy-defense-eval": "bastion.campaign.checks.privacy_defense_eval:PrivacyDefenseEvalCheck",
})
"""Every check kind: bastion's own and those of the ``bastion.checks`` entry points."""


def register_check(cls: type[Check]) -> type[Check]:
    """Class decorator: make a check kind usable in policies."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind; set the class attribute kind = '...'")
    CHECKS.add(cls.kind, cls)
    return cls


def check_kinds() -> Registry[type[Check]]:
    """The check registry: names and membership import nothing; ``check_kinds()[kind]`` imports
    that check (a missing extra is a one-line error)."""
    return CHECKS
