"""Data audits: findings over the records and columns of a dataset, before training."""

from bastion.audit.base import AuditFinding, AuditResult, DataAudit

__all__ = ["AuditFinding", "AuditResult", "DataAudit"]
