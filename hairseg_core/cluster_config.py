"""Offline validation of the cluster configurations shipped with hairseg.

A mistake in ``cluster.yaml`` otherwise shows up only after `ray up` has provisioned paid nodes, or, for
the worse kinds (a dashboard open to the internet, a pasted cloud key), never. This module checks the
files on a laptop or in CI without contacting any cloud:

* ``ray up`` configs (``cluster.yaml``, ``cluster/gcp.yaml``) go through Ray's own preparation and schema
  validation (``ray.autoscaler._private.util.prepare_config`` / ``validate_config``, the first steps of
  `ray up` before it touches a cloud API; private names: Ray 2.60 has no public offline validator, see
  docs/private-names.md), then through checks Ray does not make: node counts, GPU
  resources on trial workers, the dashboard binding, token authentication, the image's Ray version,
  region/project consistency and secrets.
* The KubeRay ``RayJob`` manifest is not an autoscaler config, so it is checked structurally here.

Every problem found is reported at once, each with its key path (or line), in one ``ClusterConfigError``.
Ray is imported lazily, only by :func:`validate_cluster_config` on autoscaler configs.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = "REPLACE_ME"
"""Marker of values a user must fill in; ``require_filled=True`` rejects any that remain."""

KUBERAY_API_VERSION = "ray.io/v1"
PUBLIC_HOSTS = {"0.0.0.0", "::", "[::]", "*"}
RAY_IMAGE_REPOS = ("rayproject/ray", "rayproject/ray-ml", "rayproject/ray-llm")

# Secrets recognised in the raw text, comments included (a key pasted into a comment is still committed).
_TEXT_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id (AKIA…/ASIA…)"),
    (
        re.compile(r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"),
        "an AWS secret access key",
    ),
    (re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\"private_key_id\"\s*:"), "a service-account key file"),
    (re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?(?![\"'$\s{])\S{8,}"), "a literal Ray auth token"),
    (
        re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?![$\s])[^@\s/'\"]+@"),
        "a URI with an embedded password",
    ),
)
# Mapping keys whose non-empty value is a secret wherever they appear.
_SECRET_KEYS = {"aws_secret_access_key", "aws_session_token", "private_key", "client_secret", "password"}
_AWS_REGION = re.compile(
    r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)(?:-gov)?-"
    r"(?:north|south|east|west|central|northeast|southeast|northwest|southwest)-\d\b"
)
_DASHBOARD_HOST = re.compile(r"--dashboard-host(?:=|\s+)([\"']?)([^\s\"';]*)\1")


class ClusterConfigError(ValueError):
    """A cluster configuration file has problems; ``problems`` lists each with its key path or line."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n{listing}")


def validate_cluster_config(path: str | Path, *, require_filled: bool = False) -> dict[str, Any]:
    """Validate a `ray up` config or a KubeRay RayJob manifest offline; raise on any problem.

    Returns the config as Ray would use it (defaults from Ray's provider ``defaults.yaml`` filled in) for
    autoscaler configs, or the RayJob document for a KubeRay manifest. ``require_filled=True`` also
    rejects values still containing ``REPLACE_ME``: shipped files keep them, a file about to be used by
    `ray up` must not.

    Overrides are explicit keys, not comments (YAML comments do not survive loading): in an autoscaler
    config, ``metadata.hairseg.allow_public_dashboard: true`` accepts ``--dashboard-host=0.0.0.0`` and
    ``metadata.hairseg.allow_no_token_auth: true`` accepts Ray started without ``RAY_AUTH_MODE=token``;
    ``metadata.hairseg.trial_node_types`` names the worker types that run trials (default: all of them);
    ``metadata.hairseg.allow_mlflow_without_auth: true`` accepts an MLflow server without a login on a private
    address (never on 0.0.0.0).
    """
    path = Path(path)
    text = _read_text(path)
    documents = _parse_documents(path, text)
    tree: Any = documents[0] if len(documents) == 1 else documents
    problems = _text_secret_problems(text)
    problems += [
        f"{_key_path(keys)}: holds a secret value; use the cloud's instance/workload identity or a "
        f"secret store instead of the cluster file"
        for keys in _secret_key_paths(tree)
    ]
    if require_filled:
        problems += [
            f"{_key_path(keys)}: still contains the placeholder {PLACEHOLDER}; fill in your own value"
            for keys, value in _walk_strings(tree)
            if PLACEHOLDER in value
        ]
    if _is_kubernetes(documents):
        result, more = _check_rayjob(documents)
    else:
        result, more = _check_autoscaler(documents[0])
    problems += more
    if problems:
        raise ClusterConfigError(path, problems)
    return result


# --------------------------------------------------------------------------------------------- loading


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc


def _parse_documents(path: Path, text: str) -> list[Any]:
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ClusterConfigError(path, [f"not valid YAML: {exc}"]) from exc
    if not documents or not all(isinstance(doc, Mapping) for doc in documents):
        raise ClusterConfigError(path, ["expected a YAML mapping (a Ray cluster config or a RayJob manifest)"])
    if len(documents) > 1 and not _is_kubernetes(documents):
        raise ClusterConfigError(path, ["a `ray up` config must be a single YAML document"])
    return documents


def _is_kubernetes(documents: list[Any]) -> bool:
    return all("apiVersion" in doc and "kind" in doc for doc in documents)


# ------------------------------------------------------------------------------------ shared helpers


def _key_path(keys: tuple[Any, ...]) -> str:
    """``("available_node_types", "ray.worker", "resources")`` →
    ``available_node_types['ray.worker'].resources``."""
    out = ""
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", str(key)):
            out += f".{key}" if out else str(key)
        else:
            out += f"[{str(key)!r}]"
    return out or "<top level>"


def _walk_strings(node: Any, keys: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string value in a parsed YAML tree with its key path."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk_strings(value, (*keys, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_strings(value, (*keys, index))
    elif isinstance(node, str):
        yield keys, node


def _secret_key_paths(node: Any, keys: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if str(key).lower() in _SECRET_KEYS and value not in (None, "", {}):
                yield (*keys, key)
            elif str(key) in ("aws_credentials", "gcp_credentials") and value:
                yield (*keys, key)
            else:
                yield from _secret_key_paths(value, (*keys, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _secret_key_paths(value, (*keys, index))


def _text_secret_problems(text: str) -> list[str]:
    """Secrets in the raw text; the message names the line and kind, never the secret itself."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, kind in _TEXT_SECRETS:
            if pattern.search(line):
                problems.append(
                    f"line {number}: looks like {kind}; never commit credentials, use IAM instance "
                    f"profiles / service accounts and a secret store"
                )
    return problems


def _installed_ray_version() -> str:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - ray is a project dependency
        return "unknown"


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _image_problems(image: Any, where: str) -> list[str]:
    """A rayproject image must carry a release tag of the installed Ray's major.minor version.

    `ray up` and `ray job submit` from this machine talk to the Ray inside the image; a different
    minor version fails at connect time or, worse, half works. Custom images cannot be checked.
    """
    if not isinstance(image, str) or not image:
        return [f"{where}: expected an image name, got {image!r}"]
    name, tag = _split_image(image)
    if not any(name == repo or name.endswith("/" + repo) for repo in RAY_IMAGE_REPOS):
        return []
    installed = _installed_ray_version()
    wanted = _major_minor(installed)
    found = _major_minor(tag)
    if found is None:
        return [
            f"{where}: {image!r} has no release tag; pin one matching the installed Ray {installed}, "
            f"e.g. rayproject/ray:{installed}-py311-gpu"
        ]
    if wanted is not None and found != wanted:
        return [
            f"{where}: {image!r} runs Ray {found[0]}.{found[1]} but Ray {installed} is installed here; "
            f"use a {wanted[0]}.{wanted[1]}.x tag (cluster and client versions must match)"
        ]
    return []


def _split_image(image: str) -> tuple[str, str]:
    """``registry:5000/rayproject/ray:2.60.0-py311-gpu@sha256:…`` → (``registry:5000/rayproject/ray``,
    ``2.60.0-py311-gpu``); the tag is empty when there is none."""
    reference = image.split("@", 1)[0]
    head, _, last = reference.rpartition("/")
    name, _, tag = last.partition(":")
    return (f"{head}/{name}" if head else name), tag


def _hairseg_metadata(config: Mapping[str, Any], problems: list[str]) -> Mapping[str, Any]:
    metadata = config.get("metadata") or {}
    settings = metadata.get("hairseg", {}) if isinstance(metadata, Mapping) else {}
    if not isinstance(settings, Mapping):
        problems.append(f"metadata.hairseg: expected a mapping of hairseg settings, got {settings!r}")
        return {}
    return settings


# --------------------------------------------------------------------------- `ray up` configurations


def _check_autoscaler(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Ray's own preparation and schema, then the checks Ray does not make."""
    problems: list[str] = []
    settings = _hairseg_metadata(raw, problems)
    problems += _structure_problems(raw)
    prepared, ray_problems, ray_rejection = _ray_validation(raw)
    config = prepared if prepared is not None else dict(raw)
    if not any(p.startswith("available_node_types:") for p in problems):
        problems += _node_count_problems(config)
        if not any(p.startswith("head_node_type:") for p in problems):  # else the head looks like a worker
            problems += _trial_gpu_problems(config, settings)
    problems += _dashboard_problems(raw, settings)
    problems += _token_auth_problems(raw, settings)
    problems += _mlflow_server_problems(raw, settings)
    problems += _docker_problems(raw)
    problems += _consistency_problems(raw)
    problems += ray_problems
    if ray_rejection and not problems:  # anything Ray rejects must fail here too
        problems.append(ray_rejection)
    return config, problems


def _ray_validation(raw: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """Run `ray up`'s offline steps: ``prepare_config`` (fills provider defaults from the YAML files
    inside the Ray package; no provider SDK or network is touched), the JSON schema (every violation,
    with its path) and ``validate_config``. The provider bootstrap that follows in `ray up` (cloud API
    calls) is deliberately not run. Both functions are private: the public ``ray.autoscaler.sdk`` has only
    ``fillout_defaults`` (one of ``prepare_config``'s steps) and ``bootstrap_config`` (which calls the cloud);
    docs/private-names.md says what breaks if Ray moves them."""
    import jsonschema  # deferred: jsonschema only to check `ray up` configs
    from ray.autoscaler._private.util import prepare_config, validate_config  # deferred: Ray only for `ray up` configs

    problems: list[str] = []
    provider = raw.get("provider")
    prepared: dict[str, Any] | None = None
    if not isinstance(provider, Mapping) or not isinstance(provider.get("type"), str):
        problems.append("provider.type: missing; expected e.g. `aws` or `gcp`")
    else:
        try:
            prepared = prepare_config(copy.deepcopy(dict(raw)))
        except Exception as exc:  # Ray raises bare KeyError/AssertionError on malformed configs
            problems.append(f"Ray's prepare_config rejected the config: {type(exc).__name__}: {exc}")
    target = prepared if prepared is not None else dict(raw)
    schema = _ray_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    for error in sorted(validator_cls(schema).iter_errors(target), key=lambda e: list(map(str, e.path))):
        problems.append(f"{_key_path(tuple(error.absolute_path))}: {error.message} (Ray's cluster schema)")
    rejection = None
    if prepared is not None and not problems:
        try:
            validate_config(prepared)
        except Exception as exc:
            rejection = f"Ray's validate_config rejected the config: {exc}"
    return prepared, problems, rejection


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler  # deferred: Ray only for `ray up` configs

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(schema_path.read_text(encoding="utf-8"))


def _structure_problems(raw: Mapping[str, Any]) -> list[str]:
    """Presence of the node-type layout, checked on the raw file: Ray's defaults would fill it in."""
    problems = []
    node_types = raw.get("available_node_types")
    if not isinstance(node_types, Mapping) or not node_types:
        problems.append("available_node_types: missing or empty; declare the head and GPU worker node types")
        node_types = {}
    head = raw.get("head_node_type")
    if head is None:
        problems.append("head_node_type: missing; name one of available_node_types")
    elif node_types and head not in node_types:
        problems.append(
            f"head_node_type: {head!r} is not one of available_node_types ({', '.join(map(str, node_types))})"
        )
    return problems


def _node_count_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    node_types = config["available_node_types"]
    head = config.get("head_node_type")
    global_max = config.get("max_workers")
    total_min = 0
    for name, node in node_types.items():
        if not isinstance(node, Mapping):
            continue  # reported by the schema
        low = node.get("min_workers", 0)
        high = node.get("max_workers", 0 if name == head else global_max)
        if isinstance(low, int) and isinstance(high, int):
            total_min += low
            if low > high:
                problems.append(
                    f"{_key_path(('available_node_types', name, 'min_workers'))}: {low} is more than "
                    f"max_workers {high}; expected min_workers <= max_workers"
                )
    if isinstance(global_max, int) and total_min > global_max:
        problems.append(
            f"max_workers: {global_max} is less than the sum of all min_workers ({total_min}); "
            f"the autoscaler could never reach the minimum"
        )
    return problems


def _trial_gpu_problems(config: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """Trials request GPUs (search space ``resources``); a worker type offering none would never run one,
    and one without a declared GPU count cannot be planned for by the autoscaler before it exists."""
    node_types = config["available_node_types"]
    head = config.get("head_node_type")
    listed = settings.get("trial_node_types")
    problems = []
    if listed is None:
        trial_types = [name for name in node_types if name != head]
    elif isinstance(listed, list):
        trial_types = list(listed)
        problems += [
            f"metadata.hairseg.trial_node_types: {name!r} is not one of available_node_types"
            for name in listed
            if name not in node_types
        ]
    else:
        return [f"metadata.hairseg.trial_node_types: expected a list of node type names, got {listed!r}"]
    for name in trial_types:
        node = node_types.get(name)
        if not isinstance(node, Mapping):
            continue
        resources = node.get("resources") or {}
        gpus = resources.get("GPU", 0) if isinstance(resources, Mapping) else 0
        if not isinstance(gpus, (int, float)) or gpus < 1:
            problems.append(
                f"{_key_path(('available_node_types', name, 'resources'))}: a trial worker type must declare "
                f'its GPUs, e.g. {{"CPU": 4, "GPU": 1}} (got {dict(resources) if resources else {}})'
            )
    return problems


def _commands(config: Mapping[str, Any], key: str) -> list[tuple[tuple[Any, ...], str]]:
    value = config.get(key) or []
    if not isinstance(value, list):
        return []  # the schema reports it
    return [((key, index), command) for index, command in enumerate(value) if isinstance(command, str)]


def _all_commands(config: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    keys = [k for k in config if str(k).endswith("_commands")]
    found = [entry for key in keys for entry in _commands(config, key)]
    node_types = config.get("available_node_types")
    if isinstance(node_types, Mapping):
        for name, node in node_types.items():
            if isinstance(node, Mapping):
                for key in ("initialization_commands", "worker_setup_commands"):
                    found += [(("available_node_types", name, *path), cmd) for path, cmd in _commands(node, key)]
    return found


def _dashboard_problems(raw: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """The dashboard serves the job-submission API, i.e. remote code execution: it must listen on an
    explicit address, and 0.0.0.0 only with an explicit override."""
    head_starts = [(path, cmd) for path, cmd in _commands(raw, "head_start_ray_commands") if _starts_head(cmd)]
    if not head_starts:
        return ["head_start_ray_commands: no `ray start --head` command found"]
    allow_public = settings.get("allow_public_dashboard") is True
    problems = []
    for path, command in head_starts:
        match = _DASHBOARD_HOST.search(command)
        where = _key_path(path)
        if match is None:
            problems.append(
                f"{where}: `ray start --head` must pass --dashboard-host explicitly, e.g. "
                f"--dashboard-host=127.0.0.1 (reach it with `ray dashboard <config>`)"
            )
        elif not match.group(2) or match.group(2).startswith("$"):
            problems.append(
                f"{where}: --dashboard-host={match.group(2)!r} is not a literal address; the bound "
                f"interface cannot be checked"
            )
        elif match.group(2) in PUBLIC_HOSTS and not allow_public:
            problems.append(
                f"{where}: --dashboard-host={match.group(2)} exposes the dashboard and job API on every "
                f"interface; bind 127.0.0.1 and tunnel with `ray dashboard`, or set "
                f"metadata.hairseg.allow_public_dashboard: true if a firewall really protects it"
            )
    return problems


def _starts_head(command: str) -> bool:
    return bool(re.search(r"\bray\s+start\b", command)) and "--head" in command


def _token_auth_problems(raw: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """Every `ray start` must run with RAY_AUTH_MODE=token (Ray 2.60 enables token auth by default only
    for local clusters); the token itself comes from the node's secret store, never this file."""
    if settings.get("allow_no_token_auth") is True:
        return []
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for path, command in _commands(raw, key):
            if re.search(r"\bray\s+start\b", command) and "RAY_AUTH_MODE=token" not in command:
                problems.append(
                    f"{_key_path(path)}: `ray start` runs without RAY_AUTH_MODE=token; prefix it with "
                    f"`export RAY_AUTH_MODE=token;` (the token is read from ~/.ray/auth_token)"
                )
    for path, command in _all_commands(raw):
        if re.search(r"RAY_AUTH_MODE\s*=\s*[\"']?disabled", command):
            problems.append(f"{_key_path(path)}: disables Ray token authentication")
    return problems


_MLFLOW_SERVER = re.compile(r"\bmlflow\s+(?:server|ui)\b")
_MLFLOW_HOST = re.compile(r"--host(?:=|\s+)([\"']?)([^\s\"';]*)\1")
_BASIC_AUTH = re.compile(r"--app-name(?:=|\s+)[\"']?basic-auth\b")
_SECRET_IN_BASHRC = re.compile(r"(MLFLOW_BACKEND_STORE_URI|PASSWORD|SECRET_KEY)[^\n]*>>\s*\S*\.bashrc")


def _mlflow_server_problems(raw: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """An MLflow server the cluster starts must ask for a login (anyone reaching it could otherwise move
    ``@champion`` or replace the exported model), never listen on every interface without one, and never get its
    database URI (which holds the database password) on a command line or into ``.bashrc``.

    ``hairseg tracking-server`` always runs MLflow's basic-auth app with its secrets in the server's environment.
    ``metadata.hairseg.allow_mlflow_without_auth: true`` accepts a login-less server on a private address (a
    network that only trusted machines reach); a public one is refused regardless.
    """
    problems = []
    for path, command in _all_commands(raw):
        where = _key_path(path)
        if _SECRET_IN_BASHRC.search(command):
            problems.append(
                f"{where}: writes a database URI or password into .bashrc; keep it in a file only its user can read "
                "(mode 0600) that the one process needing it loads (hairseg tracking-server --env-file)"
            )
        if not _MLFLOW_SERVER.search(command):
            continue
        match = _MLFLOW_HOST.search(command)
        host = match.group(2) if match else "127.0.0.1"
        if not _BASIC_AUTH.search(command):
            if host in PUBLIC_HOSTS:
                problems.append(
                    f"{where}: `mlflow server --host {host}` serves every interface without a login; start it with "
                    "`hairseg tracking-server` (MLflow's basic-auth app) on a private address"
                )
            elif settings.get("allow_mlflow_without_auth") is not True:
                problems.append(
                    f"{where}: `mlflow server` runs without a login: anyone who reaches it can move @champion or "
                    "replace the exported model; start it with `hairseg tracking-server` (--app-name basic-auth), or "
                    "set metadata.hairseg.allow_mlflow_without_auth: true"
                )
        if re.search(r"--backend-store-uri(?:=|\s+)[\"']?\$", command):
            problems.append(
                f"{where}: --backend-store-uri expands the database URI (and its password) onto the server's command "
                "line, visible in `ps`; leave MLFLOW_BACKEND_STORE_URI in the server's environment only"
            )
    return problems


def _docker_problems(raw: Mapping[str, Any]) -> list[str]:
    docker = raw.get("docker")
    problems = []
    if isinstance(docker, Mapping):
        for key in ("image", "head_image", "worker_image"):
            if key in docker:
                problems += _image_problems(docker[key], f"docker.{key}")
    node_types = raw.get("available_node_types")
    if isinstance(node_types, Mapping):
        for name, node in node_types.items():
            node_docker = node.get("docker") if isinstance(node, Mapping) else None
            if isinstance(node_docker, Mapping) and "worker_image" in node_docker:
                where = _key_path(("available_node_types", name, "docker", "worker_image"))
                problems += _image_problems(node_docker["worker_image"], where)
    return problems


def _consistency_problems(raw: Mapping[str, Any]) -> list[str]:
    """Values the commands repeat from ``provider`` (shell commands cannot reference the YAML) must agree
    with it, or nodes would, say, read their token from another region's secret store."""
    provider = raw.get("provider")
    if not isinstance(provider, Mapping):
        return []
    problems = []
    kind = provider.get("type")
    if kind == "aws" and isinstance(provider.get("region"), str):
        region = provider["region"]
        for path, command in _all_commands(raw):
            for other in sorted(set(_AWS_REGION.findall(command)) - {region}):
                problems.append(f"{_key_path(path)}: uses AWS region {other} but provider.region is {region}")
        zones = provider.get("availability_zone")
        if isinstance(zones, str):
            for zone in (z.strip() for z in zones.split(",") if z.strip()):
                if not zone.startswith(region):
                    problems.append(f"provider.availability_zone: {zone} is not in provider.region {region}")
    if kind == "gcp" and isinstance(provider.get("project_id"), str):
        project = provider["project_id"]
        for path, command in _all_commands(raw):
            for other in sorted(set(re.findall(r"projects/([^/\s'\"]+)/secrets/", command)) - {project}):
                problems.append(
                    f"{_key_path(path)}: reads a secret of project {other}, but provider.project_id is {project}"
                )
        for keys, value in _walk_strings(raw.get("available_node_types") or {}, ("available_node_types",)):
            for other in sorted(set(re.findall(r"@([^@\s.]+)\.iam\.gserviceaccount\.com", value)) - {project}):
                problems.append(
                    f"{_key_path(keys)}: service account of project {other}, but provider.project_id is {project}"
                )
    return problems


# ---------------------------------------------------------------------------- KubeRay RayJob manifests


def _check_rayjob(documents: list[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    jobs = [doc for doc in documents if doc.get("kind") == "RayJob"]
    if len(jobs) != 1:
        kinds = ", ".join(str(doc.get("kind")) for doc in documents)
        return {}, [f"kind: expected exactly one RayJob document, found {len(jobs)} (kinds: {kinds})"]
    job = jobs[0]
    problems = []
    if job.get("apiVersion") != KUBERAY_API_VERSION:
        problems.append(f"apiVersion: {job.get('apiVersion')!r}; expected {KUBERAY_API_VERSION!r}")
    metadata = job.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        problems.append("metadata.name: missing")
    spec = job.get("spec")
    if not isinstance(spec, Mapping):
        return dict(job), [*problems, "spec: missing; expected the RayJob spec"]
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        problems.append("spec.entrypoint: missing; expected the sweep command, e.g. python .../sweep.py ...")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes: must be true, or the GPU cluster keeps running after the sweep")
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, Mapping):
        return dict(job), [
            *problems,
            "spec.rayClusterSpec: missing; this manifest must define its own cluster",
        ]
    problems += _ray_version_problems(cluster.get("rayVersion"))
    head = cluster.get("headGroupSpec")
    head_containers = _pod_containers(head, ("spec", "rayClusterSpec", "headGroupSpec"), problems)
    problems += _head_group_problems(head, head_containers)
    groups = cluster.get("workerGroupSpecs")
    worker_containers: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = []
    if not isinstance(groups, list) or not groups:
        problems.append("spec.rayClusterSpec.workerGroupSpecs: missing; expected at least one GPU worker group")
        groups = []
    gpu_groups = 0
    for index, group in enumerate(groups):
        where = ("spec", "rayClusterSpec", "workerGroupSpecs", index)
        containers = _pod_containers(group, where, problems)
        worker_containers += containers
        problems += _replica_problems(group, where)
        if containers and _gpu_limit(containers[0][1]) >= 1:
            gpu_groups += 1
    if groups and gpu_groups == 0:
        problems.append(
            "spec.rayClusterSpec.workerGroupSpecs: no worker group's Ray container has a "
            "resources.limits['nvidia.com/gpu'] of at least 1; trials need GPUs"
        )
    token_auth = (cluster.get("authOptions") or {}).get("mode") == "token"
    for path, container in head_containers + worker_containers:
        problems += _container_problems(path, container, token_auth)
    return dict(job), problems


def _ray_version_problems(ray_version: Any) -> list[str]:
    installed = _installed_ray_version()
    found = _major_minor(str(ray_version)) if ray_version is not None else None
    if found is None:
        return [f"spec.rayClusterSpec.rayVersion: missing or not a version ({ray_version!r}); expected {installed}"]
    if found != _major_minor(installed):
        return [f"spec.rayClusterSpec.rayVersion: {ray_version} does not match the installed Ray {installed}"]
    return []


def _pod_containers(
    group: Any, where: tuple[Any, ...], problems: list[str]
) -> list[tuple[tuple[Any, ...], Mapping[str, Any]]]:
    containers = None
    if isinstance(group, Mapping):
        template = group.get("template")
        pod_spec = template.get("spec") if isinstance(template, Mapping) else None
        containers = pod_spec.get("containers") if isinstance(pod_spec, Mapping) else None
    if not isinstance(containers, list) or not containers or not all(isinstance(c, Mapping) for c in containers):
        problems.append(f"{_key_path((*where, 'template', 'spec', 'containers'))}: missing; expected the Ray container")
        return []
    return [((*where, "template", "spec", "containers", i), c) for i, c in enumerate(containers)]


def _head_group_problems(head: Any, containers: list[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> list[str]:
    """The head hosts the driver and autoscaler; trials on it would starve both."""
    where = ("spec", "rayClusterSpec", "headGroupSpec")
    params = head.get("rayStartParams") if isinstance(head, Mapping) else None
    problems = []
    if not isinstance(params, Mapping) or str(params.get("num-cpus")) != "0":
        problems.append(
            f'{_key_path((*where, "rayStartParams", "num-cpus"))}: must be "0" so that no trial is '
            f"scheduled on the head"
        )
    problems += [
        f"{_key_path((*path, 'resources'))}: the head requests nvidia.com/gpu; GPUs belong to worker groups"
        for path, container in containers
        if _gpu_limit(container) > 0
    ]
    return problems


def _replica_problems(group: Any, where: tuple[Any, ...]) -> list[str]:
    if not isinstance(group, Mapping):
        return [f"{_key_path(where)}: expected a worker group mapping"]
    problems = []
    if not group.get("groupName"):
        problems.append(f"{_key_path((*where, 'groupName'))}: missing")
    low, high, replicas = group.get("minReplicas", 0), group.get("maxReplicas"), group.get("replicas", 0)
    if not isinstance(high, int):
        problems.append(f"{_key_path((*where, 'maxReplicas'))}: missing; the autoscaler needs an upper bound")
    elif isinstance(low, int) and low > high:
        problems.append(f"{_key_path((*where, 'minReplicas'))}: {low} is more than maxReplicas {high}")
    elif isinstance(low, int) and isinstance(replicas, int) and not low <= replicas <= high:
        problems.append(f"{_key_path((*where, 'replicas'))}: {replicas} is outside [minReplicas, maxReplicas]")
    return problems


def _gpu_limit(container: Mapping[str, Any]) -> float:
    limits = (container.get("resources") or {}).get("limits") or {}
    try:
        return float(str(limits.get("nvidia.com/gpu", 0)))
    except ValueError:
        return 0.0


def _container_problems(path: tuple[Any, ...], container: Mapping[str, Any], token_auth: bool) -> list[str]:
    problems = _image_problems(container.get("image"), _key_path((*path, "image")))
    env = container.get("env") or []
    names = {item.get("name"): item for item in env if isinstance(item, Mapping)}
    if "MLFLOW_TRACKING_URI" not in names:
        problems.append(
            f"{_key_path((*path, 'env'))}: MLFLOW_TRACKING_URI missing; the driver and trials log to the "
            f"MLflow service through it"
        )
    for index, item in enumerate(env):
        name = str(item.get("name", "")) if isinstance(item, Mapping) else ""
        if re.search(r"(TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY|ACCESS_KEY)", name.upper()) and "value" in item:
            problems.append(
                f"{_key_path((*path, 'env', index))}: {name} has a literal value; use valueFrom.secretKeyRef"
            )
    auth_env = names.get("RAY_AUTH_MODE", {}).get("value") if "RAY_AUTH_MODE" in names else None
    if not token_auth and auth_env != "token":
        problems.append(
            f"{_key_path(path)}: Ray token authentication is off; set spec.rayClusterSpec.authOptions.mode: "
            f"token (KubeRay >= 1.5.1) or RAY_AUTH_MODE=token with RAY_AUTH_TOKEN from a Secret"
        )
    return problems
