"""The benchmarks that must work before they meet their machine: benchmarks/gpu.py's dry run (tiny sizes on the
CPU; the fractional section on a `ray start --num-gpus 1` cluster of logical GPUs). Times are not asserted."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_benchmark_dry_run_writes_every_section(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["dry_run"] is True and set(res["sections"]) == {"step", "determinism", "context", "fractional",
                                                               "packed"}
    assert not [n for n, s in res["sections"].items() if "error" in s], res["sections"]
    assert [r["cell"] for r in res["sections"]["step"]["rows"]] == ["rnn", "lstm", "gru"]
    det = res["sections"]["determinism"]
    assert det["deterministic"]["equal"] and det["deterministic"]["max_abs_diff"] == 0.0
    rows = res["sections"]["fractional"]["rows"]
    assert [r["k"] for r in rows] == [1, 2] and all(r["samples_per_s"] > 0 for r in rows)
    packed = res["sections"]["packed"]["rows"]
    assert [r["k"] for r in packed] == [1, 4] and all(r["samples_per_s"] > 0 for r in packed)
    assert "DRY RUN" in (tmp_path / "gpu.md").read_text()


def test_packed_step_benchmark_quick_measures_both_sides():
    """benchmarks/pack_step.py --quick: the packed step and the K single steps of the same members both timed
    (no timing is asserted: ratios belong in `make bench`)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pack_step

    res = pack_step.run(quick=True)
    (row,) = res["rows"]
    assert (row["cell"], row["hidden"], row["k"]) == ("rnn", 16, 4)
    assert row["packed_ms"] > 0 and row["k_singles_ms"] > 0
    assert abs(row["speedup"] - row["k_singles_ms"] / row["packed_ms"]) < 1e-9 * row["speedup"]
    assert "| rnn | 16 | 4 |" in "\n".join(pack_step.markdown(res))
