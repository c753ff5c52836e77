"""orchestrator.cluster.connect."""
