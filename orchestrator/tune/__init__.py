"""orchestrator.tune."""
