"""Reports of a scan (report.json, report.html, junit.xml, report.sarif), all from one ScanResult."""

from bastion.outputs.report.json_report import read_report, report_json_schema
from bastion.outputs.report.summary import plain_verdict
from bastion.outputs.report.writer import REPORT_FILES, write_reports

__all__ = ["REPORT_FILES", "plain_verdict", "read_report", "report_json_schema", "write_reports"]
