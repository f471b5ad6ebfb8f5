"""``hairseg tracking-server``: MLflow's tracking server behind its login, with no secret on a command line.

MLflow's ``basic-auth`` app (``mlflow server --app-name basic-auth``) asks every request for a user name and
password, and keeps users and their permissions (READ / EDIT / MANAGE per experiment and registered model)
in a database of its own. It needs three secrets, and this command takes each from the environment or from an
env file readable by its owner alone (``--env-file``, what the cluster configs write from the cloud's secret
store), never from its arguments, so ``ps`` and shell histories show none of them:

* ``MLFLOW_AUTH_ADMIN_PASSWORD``: the admin's password, used once, when the user database is created;
* ``MLFLOW_FLASK_SERVER_SECRET_KEY``: the key MLflow signs its CSRF tokens with (generated once into
  ``<state-dir>/flask-secret-key``, mode 0600, when not given);
* ``MLFLOW_BACKEND_STORE_URI``: the tracking database (an RDS URI holds a password); default sqlite in the
  state folder. ``mlflow server`` reads it from its environment, so it is never an argument either.

The auth settings file (``<state-dir>/basic_auth.ini``, mode 0600) names the user database and the admin;
``MLFLOW_AUTH_CONFIG_PATH`` points the server at it. Clients (sweeps, trials, the webcam app) log in with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` from their environment.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

#: Addresses that listen on every interface.
PUBLIC_HOSTS = {"0.0.0.0", "::", "[::]", "*"}
#: The server-side secrets this command reads from the environment or ``--env-file``.
SERVER_SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI")
#: The permission a user has on what someone else created (MLflow's ``default_permission``).
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class TrackingServerError(ValueError):
    """The tracking server cannot be started as asked; the message says why in one line."""


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (shell-quoted values, ``#`` comments, an optional ``export``) of a private file.

    A file that its group or others may read is refused: it holds passwords.
    """
    path = Path(path).expanduser()
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackingServerError(
            f"{path}: cannot read the env file ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TrackingServerError(
            f"{path}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); it holds secrets: chmod 600 {path}"
        )
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise TrackingServerError(f"{path}: line {number}: {exc}") from None
        if words[:1] == ["export"]:
            words = words[1:]
        if not words:
            continue
        key, sep, value = words[0].partition("=")
        if len(words) != 1 or not sep or not key.isidentifier():
            raise TrackingServerError(f"{path}: line {number}: expected KEY=VALUE")  # the line may hold a secret
        values[key] = value
    return values


@dataclass(frozen=True)
class ServerPlan:
    """What :func:`plan_server` decided: the command (no secrets in it) and the environment that carries them."""

    command: list[str]
    env: dict[str, str]
    auth_config: Path
    backend: str

    def describe(self) -> str:
        """One line for the log, without any secret."""
        backend = self.backend.split("://", 1)[0] + "://…" if "@" in self.backend else self.backend
        return f"{shlex.join(self.command)} (auth settings {self.auth_config}, backend store {backend})"


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def plan_server(
    *,
    host: str,
    port: int,
    state_dir: str | Path,
    environ: dict[str, str],
    artifacts_destination: str | None = None,
    workers: int = 2,
    admin_username: str = "admin",
    default_permission: str = "READ",
    auth_database_uri: str | None = None,
    allow_public: bool = False,
) -> ServerPlan:
    """The ``mlflow server --app-name basic-auth`` command and its environment; writes the auth settings."""
    if host in PUBLIC_HOSTS and not allow_public:
        raise TrackingServerError(
            f"--host {host} listens on every interface, in plain HTTP; bind a private or loopback address "
            "(put a TLS proxy in front for remote users, cluster/README.md) or pass --allow-public"
        )
    if default_permission not in PERMISSIONS:
        raise TrackingServerError(f"--default-permission {default_permission}: expected one of {PERMISSIONS}")
    state = Path(state_dir).expanduser().resolve()
    env = dict(environ)
    auth_db = auth_database_uri or f"sqlite:///{state / 'basic_auth.db'}"
    new_user_store = auth_db.startswith("sqlite:///") and not Path(auth_db[len("sqlite:///") :]).exists()
    if new_user_store and not env.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise TrackingServerError(
            f"MLFLOW_AUTH_ADMIN_PASSWORD is not set: the user store {auth_db} is new and its admin "
            f"({admin_username}) needs a password (environment or --env-file, never an argument)"
        )
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(state.stat().st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
        raise TrackingServerError(f"{state}: readable by others; it holds the auth settings: chmod 700 {state}")
    if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        key_file = state / "flask-secret-key"
        if not key_file.is_file():
            _private_file(key_file, secrets.token_hex(32))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key_file.read_text(encoding="utf-8").strip()
    backend = env.get("MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{state / 'mlflow.db'}"
    env["MLFLOW_BACKEND_STORE_URI"] = backend  # mlflow server reads it from here: never on its command line
    ini = configparser.ConfigParser()
    ini["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": auth_db,
        "admin_username": admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    auth_config = state / "basic_auth.ini"
    text = io.StringIO()
    ini.write(text)
    _private_file(auth_config, text.getvalue())
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    exe = str(mlflow_exe) if mlflow_exe.is_file() else (shutil.which("mlflow") or "mlflow")
    command = [exe, "server", "--app-name", "basic-auth", "--host", host, "--port", str(port)]
    command += ["--workers", str(workers)]
    if artifacts_destination:
        command += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    return ServerPlan(command=command, env=env, auth_config=auth_config, backend=backend)


def server_environment(env_file: str | None) -> dict[str, str]:
    """This process's environment, plus (overriding it) the secrets of ``env_file``."""
    env = dict(os.environ)
    if env_file:
        env.update(read_env_file(env_file))
    return env


def exec_server(plan: ServerPlan) -> None:
    """Replace this process by the server (same pid: a pid file written by the caller stays right)."""
    os.execve(plan.command[0], plan.command, plan.env)
