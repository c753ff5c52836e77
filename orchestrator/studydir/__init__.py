"""A study's folder on storage, local or a URI: where studies live (storage.py), the study record and atomic
writes (records.py), and the claim that lets one driver at a time run a study (claim.py)."""
