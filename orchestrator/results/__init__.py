"""Reading studies: result tables (Parquet), replicate statistics, reports, plots, and their commands.

The other half of ``orchestrator`` runs studies; this half only reads what they wrote (and never imports Ray).
"""
