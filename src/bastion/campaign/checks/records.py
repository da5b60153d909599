"""Records a privacy check reads: one dataset role of the policy, optionally some indices of it,
with labels as the target's class indices (shared by the membership, attribute-inference and
model-inversion checks)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import field_validator

from bastion.campaign.checks.base import CheckContext, CheckParams
from bastion.core.data import Dataset, align_labels
from bastion.core.targets.base import Target
from bastion.errors import UsageError


class RecordSet(CheckParams):
    """Records of one dataset role (``members``, ``non_members``, ``reference``, ``eval``, ``train``,
    ``holdout``), optionally only those at ``indices`` ("START:STOP" or a list)."""

    role: str
    indices: list[int] | str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        from bastion.campaign.policy import DATASET_ROLES

        if v not in DATASET_ROLES:
            raise ValueError(f"unknown dataset role '{v}'; allowed: {', '.join(DATASET_ROLES)}")
        return v

    @field_validator("indices")
    @classmethod
    def _indices(cls, v: Any) -> Any:
        if isinstance(v, str):
            start, sep, stop = v.partition(":")
            if not sep or not all(s.strip().isdigit() for s in (start or "0", stop or "0")):
                raise ValueError(f"indices must be a list of integers or 'START:STOP', got {v!r}")
        elif isinstance(v, list) and any(i < 0 for i in v):
            raise ValueError("indices must be >= 0")
        return v

    def select(self, n: int, where: str) -> np.ndarray:
        if self.indices is None:
            return np.arange(n)
        if isinstance(self.indices, str):
            start, _, stop = self.indices.partition(":")
            idx = np.arange(int(start or 0), int(stop) if stop.strip() else n)
        else:
            idx = np.asarray(self.indices, np.int64)
        if len(idx) == 0 or idx.max() >= n:
            raise UsageError(f"{where}.indices select records beyond the {n} of dataset role '{self.role}'"
                             if len(idx) else f"{where}.indices select no record")
        return idx


def select_records(ctx: CheckContext, target: Target, rs: RecordSet, check: str,
                   where: str) -> tuple[np.ndarray, np.ndarray]:
    """The records of ``rs`` (validated against the target's input spec) and their labels as
    class indices; a role the policy does not give is a UsageError naming it."""
    if rs.role == "eval":
        data, y = ctx.data, ctx.y
    else:
        if rs.role not in ctx.datasets:
            raise UsageError(f"check '{check}': {where} come from the dataset role '{rs.role}', which the "
                             "policy does not give", hint=f"add 'datasets: {{{rs.role}: ...}}' to the policy")
        data = ctx.datasets[rs.role]
        y = align_labels(data, target)
    assert isinstance(data, Dataset) and y is not None
    idx = rs.select(len(data), f"{where}")
    return target.input_spec.validate(data.x[idx], what=f"{where} ('{rs.role}')"), np.asarray(y)[idx]
