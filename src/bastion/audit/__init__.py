"""Data audits: findings over the records and columns of a dataset, before training."""

from bastion.audit.base import AUDITS, AuditData, AuditFinding, AuditResult, DataAudit

__all__ = ["AUDITS", "AuditData", "AuditFinding", "AuditResult", "DataAudit"]
