"""The shipped cluster configs validate offline; each kind of mistake is caught with its key path.

Negative cases copy a shipped file to tmp_path and change one thing, so each test proves that the check
fires on an otherwise valid config. Nothing here contacts a network.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hairseg_core.cluster_config import ClusterConfigError, validate_cluster_config

REPO = Path(__file__).resolve().parent.parent
AWS = REPO / "cluster.yaml"
GCP = REPO / "cluster" / "gcp.yaml"
RAYJOB = REPO / "cluster" / "kuberay-rayjob.yaml"
SHIPPED = [AWS, GCP, RAYJOB]

# AWS's documented example credentials (not a real key).
EXAMPLE_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"


def mutated(tmp_path: Path, source: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``source`` with ``change`` applied to its parsed YAML."""
    config = yaml.safe_load(source.read_text())
    change(config)
    target = tmp_path / source.name
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_config(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value.problems


def worker(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"]["gpu_worker_spot"]


def head_start(config: dict[str, Any]) -> str:
    return config["head_start_ray_commands"][1]


# ---------------------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    assert validate_cluster_config(path)


def test_aws_config_is_what_ray_up_would_use() -> None:
    config = validate_cluster_config(AWS)
    nodes = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert nodes["hairseg_head"]["resources"] == {"CPU": 0}
    assert nodes["hairseg_head"]["max_workers"] == 0  # filled in by Ray's prepare_config
    assert nodes["gpu_worker_spot"]["resources"]["GPU"] == 1
    assert nodes["gpu_worker_spot"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "cluster_synced_files" in config  # a default Ray's validate_config insists on
    # setup_commands are merged into the head's and workers' lists, as `ray up` runs them
    assert config["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]


def test_validation_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access during validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for path in SHIPPED:
        validate_cluster_config(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_placeholders_are_reported_when_required_filled(path: Path) -> None:
    problems = problems_of(path, require_filled=True)
    assert problems and all("REPLACE_ME" in p for p in problems)


def test_filled_in_config_passes_require_filled(tmp_path: Path) -> None:
    text = AWS.read_text().replace("REPLACE_ME_ACCOUNT_ID", "123456789012")
    text = text.replace("ami-REPLACE_ME", "ami-0123456789abcdef0").replace("REPLACE_ME_BUCKET", "my-bucket")
    target = tmp_path / "cluster.yaml"
    target.write_text(text)
    assert validate_cluster_config(target, require_filled=True)


# ------------------------------------------------------------------------------ `ray up` negative cases


def test_typo_in_node_type_key_is_caught_by_rays_schema(tmp_path: Path) -> None:
    def typo(config: dict[str, Any]) -> None:
        worker(config)["max_wokers"] = worker(config).pop("max_workers")

    problems = problems_of(mutated(tmp_path, AWS, typo))
    assert any(p.startswith("available_node_types.gpu_worker_spot:") and "max_wokers" in p for p in problems)


def test_typo_in_top_level_key_is_caught(tmp_path: Path) -> None:
    def typo(config: dict[str, Any]) -> None:
        config["idle_timout_minutes"] = config.pop("idle_timeout_minutes")

    problems = problems_of(mutated(tmp_path, AWS, typo))
    assert any("idle_timout_minutes" in p and "schema" in p for p in problems)


def test_unknown_head_node_type(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: c.update(head_node_type="hairseg_haed"))
    problems = problems_of(path)
    assert any(p.startswith("head_node_type:") and "'hairseg_haed'" in p and "gpu_worker_spot" in p for p in problems)


def test_min_workers_above_max_workers(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: worker(c).update(min_workers=9, max_workers=2))
    problems = problems_of(path)
    assert any(p.startswith("available_node_types.gpu_worker_spot.min_workers:") for p in problems)


def test_global_max_workers_below_sum_of_min_workers(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: (worker(c).update(min_workers=4), c.update(max_workers=3)))
    problems = problems_of(path)
    assert any(p.startswith("max_workers:") and "(4)" in p for p in problems)


def test_trial_worker_without_gpu(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: worker(c).update(resources={"CPU": 4}))
    problems = problems_of(path)
    assert any(p.startswith("available_node_types.gpu_worker_spot.resources:") for p in problems)


def test_cpu_worker_type_allowed_when_trial_types_are_named(tmp_path: Path) -> None:
    def add_cpu_workers(config: dict[str, Any]) -> None:
        cpu = {"resources": {"CPU": 8}, "node_config": {"InstanceType": "m5.2xlarge"}, "max_workers": 2}
        config["available_node_types"]["cpu_worker"] = cpu
        config["metadata"] = {"hairseg": {"trial_node_types": ["gpu_worker_spot"]}}

    assert validate_cluster_config(mutated(tmp_path, AWS, add_cpu_workers))


def test_dashboard_bound_to_all_interfaces(tmp_path: Path) -> None:
    def public(config: dict[str, Any]) -> None:
        config["head_start_ray_commands"][1] = head_start(config).replace("127.0.0.1", "0.0.0.0")

    path = mutated(tmp_path, AWS, public)
    problems = problems_of(path)
    assert any(p.startswith("head_start_ray_commands[1]:") and "0.0.0.0" in p for p in problems)

    # the override is a key in the config, not a comment
    config = yaml.safe_load(path.read_text())
    config["metadata"] = {"hairseg": {"allow_public_dashboard": True}}
    path.write_text(yaml.safe_dump(config))
    assert validate_cluster_config(path)


def test_dashboard_host_must_be_explicit(tmp_path: Path) -> None:
    def implicit(config: dict[str, Any]) -> None:
        config["head_start_ray_commands"][1] = head_start(config).replace("--dashboard-host=127.0.0.1", "")

    problems = problems_of(mutated(tmp_path, AWS, implicit))
    assert any(p.startswith("head_start_ray_commands[1]:") and "--dashboard-host" in p for p in problems)


def test_ray_started_without_token_auth(tmp_path: Path) -> None:
    def no_auth(config: dict[str, Any]) -> None:
        start = config["worker_start_ray_commands"][1]
        config["worker_start_ray_commands"][1] = start.replace("export RAY_AUTH_MODE=token;", "")

    problems = problems_of(mutated(tmp_path, AWS, no_auth))
    assert any(p.startswith("worker_start_ray_commands[1]:") and "RAY_AUTH_MODE" in p for p in problems)


def test_docker_image_of_another_ray_version(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: c["docker"].update(image="rayproject/ray:2.59.0-py311-gpu"))
    problems = problems_of(path)
    assert any(p.startswith("docker.image:") and "2.59" in p for p in problems)


def test_unpinned_docker_image(tmp_path: Path) -> None:
    path = mutated(tmp_path, GCP, lambda c: c["docker"].update(image="rayproject/ray:latest-gpu"))
    assert any(p.startswith("docker.image:") and "release tag" in p for p in problems_of(path))


def test_pasted_aws_secret_key(tmp_path: Path) -> None:
    def paste(config: dict[str, Any]) -> None:
        config["provider"]["aws_credentials"] = {
            "aws_access_key_id": EXAMPLE_KEY_ID,
            "aws_secret_access_key": EXAMPLE_SECRET,
        }

    problems = problems_of(mutated(tmp_path, AWS, paste))
    text = "\n".join(problems)
    assert "provider.aws_credentials" in text
    assert "AWS access key id" in text and "AWS secret access key" in text
    assert EXAMPLE_SECRET not in text and EXAMPLE_KEY_ID not in text  # the error never repeats a secret


def test_secret_in_a_comment_or_command(tmp_path: Path) -> None:
    target = tmp_path / "cluster.yaml"
    target.write_text(
        AWS.read_text() + f"# old key: {EXAMPLE_KEY_ID}\n"
        "# backend: postgresql://mlflow:hunter2secret@db.internal:5432/mlflow\n"
    )
    problems = problems_of(target)
    lines = len(AWS.read_text().splitlines())
    assert any(p.startswith(f"line {lines + 1}:") and "access key id" in p for p in problems)
    assert any(p.startswith(f"line {lines + 2}:") and "embedded password" in p for p in problems)


def test_region_mismatch_between_provider_and_commands(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: c["provider"].update(region="eu-west-1"))
    problems = problems_of(path)
    assert any("setup_commands[2]" in p and "us-west-2" in p for p in problems)
    assert any(p.startswith("provider.availability_zone:") for p in problems)


def test_gcp_project_mismatch(tmp_path: Path) -> None:
    path = mutated(tmp_path, GCP, lambda c: c["provider"].update(project_id="other-project"))
    problems = problems_of(path)
    assert any(p.startswith("setup_commands[2]:") for p in problems)
    assert any("serviceAccounts[0].email" in p for p in problems)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    def break_many(config: dict[str, Any]) -> None:
        config["head_node_type"] = "nope"
        worker(config).update(min_workers=5, max_workers=1)
        config["docker"]["image"] = "rayproject/ray:2.40.0-py311-gpu"
        config["head_start_ray_commands"][1] = head_start(config).replace("127.0.0.1", "0.0.0.0")

    problems = problems_of(mutated(tmp_path, AWS, break_many))
    for prefix in ("head_node_type:", "available_node_types.gpu_worker_spot.min_workers:", "docker.image:"):
        assert any(p.startswith(prefix) for p in problems), prefix
    assert any("0.0.0.0" in p for p in problems)
    assert len(problems) == 4, problems  # and nothing spurious (e.g. the head mistaken for a worker)


def test_missing_provider_and_unreadable_files(tmp_path: Path) -> None:
    path = mutated(tmp_path, AWS, lambda c: c.pop("provider"))
    assert any(p.startswith("provider.type:") for p in problems_of(path))
    assert problems_of(tmp_path / "absent.yaml")[0].startswith("cannot read the file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    assert problems_of(bad)[0].startswith("not valid YAML")


# ---------------------------------------------------------------------------- KubeRay negative cases


def cluster_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]


def worker_container(job: dict[str, Any]) -> dict[str, Any]:
    return cluster_spec(job)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def head_container(job: dict[str, Any]) -> dict[str, Any]:
    return cluster_spec(job)["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("change", "expected_prefix"),
    [
        (lambda j: j.update(kind="RayCluster"), "kind:"),
        (lambda j: j.update(apiVersion="ray.io/v1alpha1"), "apiVersion:"),
        (lambda j: j["spec"].pop("entrypoint"), "spec.entrypoint:"),
        (lambda j: j["spec"].update(shutdownAfterJobFinishes=False), "spec.shutdownAfterJobFinishes:"),
        (lambda j: cluster_spec(j).update(rayVersion="2.59.0"), "spec.rayClusterSpec.rayVersion:"),
        (lambda j: cluster_spec(j).update(workerGroupSpecs=[]), "spec.rayClusterSpec.workerGroupSpecs:"),
        (
            lambda j: worker_container(j)["resources"]["limits"].pop("nvidia.com/gpu"),
            "spec.rayClusterSpec.workerGroupSpecs:",
        ),
        (
            lambda j: cluster_spec(j)["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
            "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus:",
        ),
        (
            lambda j: head_container(j)["resources"]["limits"].update({"nvidia.com/gpu": 1}),
            "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources:",
        ),
        (
            lambda j: cluster_spec(j)["workerGroupSpecs"][0].update(minReplicas=9),
            "spec.rayClusterSpec.workerGroupSpecs[0].minReplicas:",
        ),
        (
            lambda j: head_container(j).update(env=[]),
            "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env:",
        ),
        (
            lambda j: cluster_spec(j).pop("authOptions"),
            "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]:",
        ),
        (
            lambda j: worker_container(j).update(image="rayproject/ray:2.41.0-gpu"),
            "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].image:",
        ),
        (
            lambda j: worker_container(j)["env"].append({"name": "RAY_AUTH_TOKEN", "value": "x" * 32}),
            "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].env[3]:",
        ),
    ],
    ids=[
        "kind",
        "apiVersion",
        "entrypoint",
        "shutdown",
        "rayVersion",
        "no-worker-group",
        "no-gpu-limit",
        "head-runs-trials",
        "head-gpu",
        "replicas",
        "no-mlflow-env",
        "no-token-auth",
        "image-version",
        "literal-token",
    ],
)
def test_rayjob_mistakes(tmp_path: Path, change: Callable[[dict[str, Any]], Any], expected_prefix: str) -> None:
    problems = problems_of(mutated(tmp_path, RAYJOB, change))
    assert any(p.startswith(expected_prefix) for p in problems), problems


def test_cli_validate_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hairseg_core import cli

    assert cli.main(["validate-cluster", *map(str, SHIPPED)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(SHIPPED)

    def unknown_head(config: dict[str, Any]) -> None:
        config["head_node_type"] = "nope"

    broken = mutated(tmp_path, AWS, unknown_head)
    assert cli.main(["validate-cluster", str(broken)]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["validate-cluster", "--require-filled", str(AWS)]) == 2
    assert "REPLACE_ME" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- MLflow behind a login (#28)
def _old_mlflow_start(host: str, auth: str = "") -> str:
    return (
        "HEAD_IP=$(hostname -I | awk '{print $1}'); "
        f"nohup mlflow server {auth}--host {host} --port 5000 "
        '--backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:////home/ray/hairseg-state/mlflow.db}" '
        "--serve-artifacts >> ~/hairseg-state/mlflow.log 2>&1 &"
    )


@pytest.mark.parametrize("source", [AWS, GCP])
def test_shipped_configs_start_mlflow_behind_its_login(source: Path) -> None:
    text = source.read_text()
    assert "hairseg tracking-server" in text and "--env-file ~/hairseg-state/mlflow-server.env" in text
    assert "nohup mlflow server" not in text and "--backend-store-uri" not in text
    assert ". ~/.hairseg/mlflow-login.env" in text  # trials get MLFLOW_TRACKING_USERNAME/_PASSWORD from ray start


def test_rayjob_logs_in_from_a_secret() -> None:
    text = RAYJOB.read_text()
    assert text.count("secretKeyRef: {name: hairseg-mlflow-login, key: password}") == 2  # head and workers


def test_public_mlflow_server_without_login_is_refused(tmp_path: Path) -> None:
    def public(config: dict[str, Any]) -> None:
        config["head_start_ray_commands"][2] = _old_mlflow_start("0.0.0.0")
        config["metadata"] = {"hairseg": {"allow_mlflow_without_auth": True}}  # no override for a public one

    problems = problems_of(mutated(tmp_path, AWS, public))
    assert any(p.startswith("head_start_ray_commands[2]:") and "every interface without a login" in p for p in problems)
    assert any("--backend-store-uri expands" in p for p in problems)


def test_private_mlflow_server_without_login_needs_the_override(tmp_path: Path) -> None:
    def private(config: dict[str, Any]) -> None:
        config["head_start_ray_commands"][2] = _old_mlflow_start('"$HEAD_IP"').replace("--backend-store-uri", "--x")

    path = mutated(tmp_path, AWS, private)
    assert any("runs without a login" in p for p in problems_of(path))
    config = yaml.safe_load(path.read_text())
    config["metadata"] = {"hairseg": {"allow_mlflow_without_auth": True}}
    path.write_text(yaml.safe_dump(config))
    assert validate_cluster_config(path)
    # and with the login the override is not needed
    config = yaml.safe_load(path.read_text())
    config.pop("metadata")
    config["head_start_ray_commands"][2] = _old_mlflow_start('"$HEAD_IP"', "--app-name basic-auth ").replace(
        "--backend-store-uri", "--x"
    )
    path.write_text(yaml.safe_dump(config))
    assert validate_cluster_config(path)


def test_database_password_into_bashrc_is_refused(tmp_path: Path) -> None:
    def bashrc(config: dict[str, Any]) -> None:
        config["head_setup_commands"].append(
            "echo 'export MLFLOW_BACKEND_STORE_URI=$(cat ~/hairseg-state/backend-store-uri)' >> ~/.bashrc"
        )

    problems = problems_of(mutated(tmp_path, AWS, bashrc))
    assert any(p.startswith("head_setup_commands[") and ".bashrc" in p for p in problems)
