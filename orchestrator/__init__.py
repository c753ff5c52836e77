"""adder-sweep's orchestration: CLI, search spaces, Ray Tune launch and resume, result tables, reports."""
