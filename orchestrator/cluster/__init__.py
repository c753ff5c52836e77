"""The Ray a study runs on (connect.py): an embedded local Ray or a cluster and its auth, the trials'
runtime_env, and the probe that checks every node before a launch."""
