"""The ``model-file`` check: ``bastion inspect`` inside a scan — model files are analysed for code
that loading them would run, without loading them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from bastion.campaign.checks.base import Check, CheckContext, CheckParams, register_check
from bastion.core.results import CheckResult, Severity
from bastion.errors import UsageError


class ModelFileParams(CheckParams):
    paths: list[str] = Field(min_length=1, description="Files or directories, relative to the policy file.")
    fail_on: Severity = Severity.high
    config: str | None = Field(default=None, description="Allow-list / limits file for the scanner.")


@register_check
class ModelFileCheck(Check):
    kind = "model-file"
    Params = ModelFileParams
    needs_model = False

    def run(self, ctx: CheckContext) -> CheckResult:
        from bastion.supply.config import InspectConfig
        from bastion.supply.inspect import inspect_check

        params: ModelFileParams = self.params  # type: ignore[assignment]
        paths = [p if Path(p).is_absolute() else ctx.policy_dir / p for p in map(Path, params.paths)]
        missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
        if missing:
            raise UsageError(f"check '{self.name}': no such file or directory: {', '.join(missing)}")
        config = None
        if params.config:
            cfg = Path(params.config)
            config = InspectConfig.from_file(cfg if cfg.is_absolute() else ctx.policy_dir / cfg)
        result = inspect_check(paths, config=config, fail_on=params.fail_on)
        return result.model_copy(update={"name": self.name, "kind": self.kind})
