"""Commands that do not train start fast: --help and validate import none of torch, ray or pandas (each takes
0.5-2 s to import). Times are measured in `make bench` (benchmarks/analysis_bench.py: ``startup``), not asserted here."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "ray", "pandas")
PROBE = """
import json, sys
from orchestrator.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("argv", [
    ["--help"], ["sweep", "--help"], ["extend", "--help"], ["report", "--help"], ["train", "--help"],
    ["validate", str(ROOT / "search_spaces" / "quick.yaml")],
    ["validate", str(ROOT / "search_spaces" / "optuna_small.yaml")],
], ids=lambda a: " ".join(a)[:30].replace(str(ROOT), ""))
def test_command_imports_no_heavy_library(argv):
    p = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, p.stderr
    assert result["heavy"] == [], f"{' '.join(argv)} imported {result['heavy']}"
