"""The examples in docs/: what can be checked here without the systems they target is checked."""
import re

import yaml

from tests.conftest import ROOT


def _yaml_blocks(doc: str) -> list:
    text = (ROOT / "docs" / doc).read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_ray_up_example_passes_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = next(b for b in _yaml_blocks("CLUSTER.md") if "cluster_name" in b)
    validate_config(prepare_config(config))  # what `ray up` does first: raises on a config it would refuse
    assert config["provider"]["type"] == "local" and len(config["provider"]["worker_ips"]) == 2
    assert any("adder-sweep[cluster]" in c for c in config["setup_commands"])


def test_rayjob_example_has_the_fields_kuberay_v1_needs():
    job = next(b for b in _yaml_blocks("CLUSTER.md") if b.get("kind") == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("adder-sweep sweep ")
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert all(g["template"]["spec"]["containers"] for g in cluster["workerGroupSpecs"])
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


REPRODUCTION = ROOT / "docs" / "REPRODUCTION.md"
TABLES = ROOT / "docs" / "reproduction"


def _committed_studies() -> list:
    return sorted(p.name for p in TABLES.iterdir() if p.is_dir())


def test_reproduction_doc_links_studies_that_are_committed_whole():
    """Every study docs/REPRODUCTION.md links under reproduction/ is there with its tables and record, is
    finished, and ran each of its configurations with at least 3 seeds (the doc's N = 3)."""
    from orchestrator.results import report

    doc = REPRODUCTION.read_text()
    linked = set(re.findall(r"\(reproduction/([\w.-]+)\)", doc))
    committed = _committed_studies()
    assert linked and linked <= set(committed), f"linked but not committed: {linked - set(committed)}"
    for name in committed:
        assert f"`{name}`" in doc, f"docs/reproduction/{name} is not named in REPRODUCTION.md"
        files = {p.name for p in (TABLES / name).iterdir() if p.is_file()}
        assert {"trials.parquet", "metrics.parquet", "adder_study.json", "space.yaml"} <= files, (name, files)
        study = report.load_study(str(TABLES / name))
        t = study.trials
        assert study.record["name"] == name and (t["state"] == "terminated").all(), name
        seeds = t.groupby("config_id")["seed"].agg(lambda s: sorted(s))
        assert all(len(s) >= 3 and len(set(s)) == len(s) for s in seeds), (name, seeds.to_dict())


def test_reproduction_doc_intervals_recompute_from_the_committed_tables():
    """Each configuration whose seeds all solved: its mean ± 95% interval of iters_to_solve, recomputed from the
    committed trials.parquet as `adder-sweep report` does, is the text in the doc."""
    from orchestrator.results import report
    from orchestrator.results.stats import censored_estimate

    doc = REPRODUCTION.read_text()
    checked = 0
    for name in _committed_studies():
        t = report.load_study(str(TABLES / name)).trials
        for _, g in t.groupby("config_id"):
            e = censored_estimate(list(g["iters_to_solve"]), list(g["iters"]))
            if e.solved == e.n and e.half > 0:
                text = e.text().split(" (")[0]  # "1100 ± 215"
                assert text in doc, f"{name}: {g.iloc[0]['config_id']} seeds {sorted(g['iters_to_solve'])} " \
                                    f"give {text}, not in REPRODUCTION.md"
                checked += 1
    assert checked >= 10
