"""Running a study on Ray Tune: launch, resume and fit (study.py), extend (extend.py), the spec as Tune's objects
(search.py), the driver's callbacks (callbacks.py), the copy and repair of Tune's state (state_copy.py, study.py),
MLflow tracking (tracking.py). The API (orchestrator/api.py) is its caller."""
