"""orchestrator.studydir."""
