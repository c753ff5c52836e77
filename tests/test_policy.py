"""The skip policy of tests that need the machine (tests/conftest.py: require): a reasoned skip for a user who
lacks the prerequisite, a failure under CI=true."""
import os
import subprocess
import sys

from tests.conftest import ROOT

NEEDS_A_UNICORN = """\
from tests.conftest import require


def test_needs_a_unicorn():
    require(False, "needs a unicorn (apt-get install unicorn)")
"""


def _run(tmp_path, ci):
    (tmp_path / "test_unicorn.py").write_text(NEEDS_A_UNICORN)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), str(tmp_path / "test_unicorn.py")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_a_missing_prerequisite_skips_with_its_reason_outside_ci(tmp_path):
    p = _run(tmp_path, None)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SKIPPED" in p.stdout and "needs a unicorn (apt-get install unicorn)" in p.stdout


def test_a_missing_prerequisite_fails_under_ci(tmp_path):
    p = _run(tmp_path, "true")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "CI=true, but this test's prerequisite is missing: needs a unicorn" in p.stdout
