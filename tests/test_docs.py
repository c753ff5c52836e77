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
