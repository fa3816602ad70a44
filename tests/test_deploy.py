"""deploy/: the KubeRay RayJob manifest passes KubeRay's own RayJob schema as strictly as kubectl applies it, and runs the command on storage every pod mounts at one path."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "deploy" / "kuberay"


def strict(schema):
    """`schema` refusing fields it does not name, as kubectl's strict field validation does (its default):
    a CRD's structural schema leaves them out, and the API server would drop them without a word."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    checked = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        checked["additionalProperties"] = False
    return checked


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = json.loads((KUBERAY / "rayjob.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(strict(schema))


@pytest.fixture
def rayjob() -> dict:
    return yaml.safe_load((KUBERAY / "rayjob.yaml").read_text(encoding="utf-8"))


def problems(validator: jsonschema.Validator, manifest: dict) -> list[str]:
    return sorted(
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


def test_the_rayjob_manifest_passes_kuberays_rayjob_schema(validator, rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert problems(validator, rayjob) == []


def test_the_schema_check_refuses_a_wrong_type_a_misspelt_field_and_a_missing_head(
    validator, rayjob
):
    wrong_type, misspelt, headless = (copy.deepcopy(rayjob) for _ in range(3))
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    misspelt["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    del headless["spec"]["rayClusterSpec"]["headGroupSpec"]

    assert problems(validator, wrong_type) == [
        "spec.rayClusterSpec.workerGroupSpecs.0.replicas: 'two' is not of type 'integer'"
    ]
    assert any("'replica' was unexpected" in problem for problem in problems(validator, misspelt))
    assert problems(validator, headless) == [
        "spec.rayClusterSpec: 'headGroupSpec' is a required property"
    ]


def test_the_job_runs_the_command_on_a_volume_every_pod_mounts_at_one_path(rayjob):
    from core.__main__ import build_parser

    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "core"]
    args = build_parser().parse_args(words[3:])
    assert (args.command, args.engine, args.address) == ("embed", "ray", "auto")

    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    mounts = set()
    for pod in pods:
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in pod["volumes"]
        }
        (container,) = pod["containers"]
        mounts |= {
            (claims[mount["name"]], mount["mountPath"]) for mount in container["volumeMounts"]
        }
    ((claim, path),) = mounts
    assert args.source.startswith(path + "/") and args.out.startswith(path + "/")
    volume = yaml.safe_load((KUBERAY / "data.yaml").read_text(encoding="utf-8"))
    assert volume["metadata"]["name"] == claim and volume["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    assert cluster["authOptions"] == {"mode": "token"}


def test_the_image_installs_the_requirements_with_their_torch_pin():
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    (torch,) = re.findall(r"^torch==\S+", requirements, flags=re.MULTILINE)
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert f"pip install --no-cache-dir {torch} " in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
