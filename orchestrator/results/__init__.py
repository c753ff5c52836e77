"""Reading studies: result tables (Parquet), replicate statistics, importance, reports, plots, the study page.

The other half of ``orchestrator`` runs studies; this half reads what they wrote and writes only its own outputs
(the tables, report.md, plots, report.html), and never imports Ray; its commands are in orchestrator/cli/report.py.
The copy of Ray's experiment state that the driver keeps is the running side's (orchestrator/tune/state_copy.py).
"""

# Choices of the report commands' flags, here so that building the CLI parser imports no pandas.
AGGS = ("median", "mean", "min", "max", "std", "count")
FORMATS = ("text", "md", "csv", "json")
