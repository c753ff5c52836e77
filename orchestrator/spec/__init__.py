"""What a study is, before anything runs: the search space as a validated StudySpec (space.py), the trials it
plans (plan.py), and the description ``validate`` prints (describe.py). Plain data: no Ray, no torch, no files
but the search-space file itself."""
