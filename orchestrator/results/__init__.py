"""Reading studies: result tables (Parquet), replicate statistics, reports, plots, and their commands.

The other half of ``orchestrator`` runs studies; this half only reads what they wrote (and never imports Ray).
"""

# Choices of the report commands' flags, here so that building the CLI parser imports no pandas.
AGGS = ("median", "mean", "min", "max", "std", "count")
FORMATS = ("text", "md", "csv", "json")
