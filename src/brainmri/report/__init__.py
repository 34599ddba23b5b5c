"""``brainmri report RUN``: one self-contained HTML report that only reads result files."""

from brainmri.report.build import render_report, write_report
from brainmri.report.sections import Options
from brainmri.report.sources import Inputs, resolve_inputs

__all__ = ["Inputs", "Options", "render_report", "resolve_inputs", "write_report"]
