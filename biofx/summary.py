"""Public path ``biofx.summary`` (documented; ``from biofx.summary import summary``), kept as an
alias: the summary is a view of the report and lives in :mod:`biofx.report`."""

from .report import Summary, summary

__all__ = ["summary", "Summary"]
