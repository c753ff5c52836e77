"""orchestrator.spec."""
