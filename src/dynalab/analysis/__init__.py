"""Reports over run folders: IQM with stratified-bootstrap CIs (rliable), figures, summary.md, index.html.

`make_report(dirs, out, reps=2000)` (in `dynalab.analysis.report`) is the entry point; importing it
pulls in pandas, matplotlib and rliable, so this package imports it lazily.
"""

__all__ = ["make_report", "ReportError"]


def __getattr__(name):
    if name == "make_report":
        from dynalab.analysis.report import make_report

        return make_report
    if name == "ReportError":
        from dynalab.analysis.runs import ReportError

        return ReportError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
