"""The driver's Tune callbacks (orchestrator/callbacks.py): the live study page from results in memory."""
import json
import pickle
from types import SimpleNamespace

from orchestrator.callbacks import LivePage, wait_for_live_pages
from orchestrator.space import parse_space

SPACE = "space:\n  cell: {grid: [rnn, gru]}\n  digits: 3\n  iters: 100\n  eval_every: 20\n"


def test_live_page_is_drawn_from_memory_only(tmp_path):
    spec = parse_space(SPACE, "live.yaml")
    study = tmp_path / "live"
    study.mkdir()
    (study / "adder_study.json").write_text(json.dumps({"name": "live", "spec": spec.to_json(), "runs": []}))
    cb = LivePage("live", str(tmp_path), spec.to_json(), every_s=0)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"cell": c, "digits": 3, "iters": 100, "eval_every": 20,
                                                         "_continues": ""}) for i, c in enumerate(["rnn", "gru"])]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    for it in (20, 40):
        for t in trials:
            cb.on_trial_result(0, trials, t, {"iter": it, "loss": 2.0 / it, "exact_acc": it / 100, "digit_acc": 0.5,
                                              "status": "running", "time_total_s": it / 10.0})
    wait_for_live_pages()  # pages are rendered off Tune's event loop, in a background thread
    page = (study / "report.html").read_text()
    assert "Live view at" in page and "2 trials this run has started" in page
    assert "2/2 trials (2 running)" in page
    assert not list(study.glob("*.parquet"))  # nothing tabulated from storage: the page came from memory
    # Tune pickles callbacks with the study's state: only plain data goes in, no results
    restored = pickle.loads(pickle.dumps(cb))
    assert restored.trials == {} and restored.name == "live"
