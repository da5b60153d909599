"""The ``model-file`` check: ``bastion inspect`` inside a scan — model files are analysed for code
that loading them would run, without loading them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from bastion.campaign.checks.base import Check, CheckContext, CheckParams, CheckInputError, register_check
from bastion.core.results import CheckResult, Severity


class ModelFileParams(CheckParams):
    paths: list[str] = Field(min_length=1, description="Files or directories, relative to the policy file.")
    fail_on: Severity = Severity.high
    config: str | None = Field(default=None, description="Allow-list / limits file for the scanner.")


@register_check
class ModelFileCheck(Check):
    kind = "model-file"
    Params = ModelFileParams
    needs_model = False
    metric_names = frozenset({"files_scanned", "files_not_scanned", "files_not_analysed", "findings"})

    def validate_inputs(self, policy_dir: Path) -> None:
        """Every path must exist when the policy loads, not halfway through a scan."""
        params: ModelFileParams = self.params  # type: ignore[assignment]
        for i, p in enumerate(params.paths):
            path = Path(p) if Path(p).is_absolute() else policy_dir / p
            if not path.exists() and not path.is_symlink():
                raise CheckInputError(("paths", i), f"no such file or directory: {path}")
        if params.config:
            cfg = Path(params.config) if Path(params.config).is_absolute() else policy_dir / params.config
            if not cfg.is_file():
                raise CheckInputError(("config",), f"no such file: {cfg}")

    def run(self, ctx: CheckContext) -> CheckResult:
        """Files that could not be read make the result incomplete: a gate on it fails."""
        from bastion.supply.config import InspectConfig
        from bastion.supply.inspect import inspect_check

        params: ModelFileParams = self.params  # type: ignore[assignment]
        paths = [p if Path(p).is_absolute() else ctx.policy_dir / p for p in map(Path, params.paths)]
        config = None
        if params.config:
            cfg = Path(params.config)
            config = InspectConfig.from_file(cfg if cfg.is_absolute() else ctx.policy_dir / cfg)
        result = inspect_check(paths, config=config, fail_on=params.fail_on)
        return result.model_copy(update={"name": self.name, "kind": self.kind})
