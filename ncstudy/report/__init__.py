"""Study reports: MLflow -> tables (the source paper's layout), figures and index.html."""

from ncstudy.report.build import Report, write_report
from ncstudy.report.load import ReportError, StudyData, load_study_data

__all__ = ["Report", "ReportError", "StudyData", "load_study_data", "write_report"]
