"""What `wecomd check` reports beyond load errors: a deployment with no app, and likely mistakes."""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from wecomd.config import MIN_SECRET_LENGTH, AdminConfig, AppConfig, Config, ConfigError, ServerConfig, load

NO_APP = "no [app:NAME] or [bot:NAME] section: wecomd would receive no callbacks"
WHO = "the user wecomd runs as"


class StartupError(Exception):
    """Why `serve` cannot start, as one line that says what to do; `wecomd serve` prints it, exits 1."""


def check(path: Union[str, Path], environ: Optional[Mapping[str, str]] = None) -> Tuple[List[str], List[str]]:
    """(errors, warnings) for a config file; `wecomd check` fails when errors is not empty.

    Errors are everything `config.load` refuses, plus a config without any app or bot, which loads
    (the demo and tests use such configs) but cannot serve as a deployment.
    """
    try:
        config = load(path, environ)
    except ConfigError as exc:
        return exc.problems, []
    return ([] if config.apps or config.bots else [NO_APP]), warnings(config)


def warnings(config: Config) -> List[str]:
    """Things that load but are probably mistakes; `wecomd check` prints them."""
    return (_admin_warnings(config.admin) + _app_warnings(config.apps) + _server_warnings(config.server)
            + ["environment %s: matches no option and is ignored (the environment cannot add an "
               "[app:NAME] section)" % name for name in config.ignored_env])


def _admin_warnings(admin: AdminConfig) -> List[str]:
    found = []
    if not admin.password_hash:
        found.append("[admin] password_hash is empty: nobody can log in (see `wecomd hash-password`)")
    if not admin.cookie_secret:
        found.append("[admin] cookie_secret is empty: dashboard sessions cannot be signed")
    for name in ("cookie_secret", "api_token"):
        if 0 < len(getattr(admin, name)) < MIN_SECRET_LENGTH:
            found.append("[admin] %s is shorter than %d characters" % (name, MIN_SECRET_LENGTH))
    return found


def _app_warnings(apps: Dict[str, AppConfig]) -> List[str]:
    found: List[str] = []
    first: Dict[tuple, str] = {}
    for app in apps.values():
        if not re.fullmatch(r"w[wx][0-9a-fA-F]{16}", app.corp_id):
            found.append("[app:%s] corp_id does not look like a CorpID (ww or wx, then 16 hex digits)"
                         % app.name)
        other = first.setdefault((app.corp_id, app.agent_id), app.name)
        if other != app.name:
            found.append("[app:%s] and [app:%s] have the same corp_id and agent_id" % (other, app.name))
    return found


def _server_warnings(server: ServerConfig) -> List[str]:
    found = []
    if server.timestamp_window == 0:
        found.append("[server] timestamp_window = 0: callback timestamps are not checked")
    if server.xheaders and not _is_loopback(server.listen_host):
        found.append("[server] xheaders = yes on a non-loopback address: clients can forge their IP")
    folder = Path(server.database).parent
    if "://" not in server.database and not (folder.is_dir() and os.access(folder, os.W_OK)):
        found.append("[server] database: directory %s does not exist or is not writable" % folder)
    problem = media_dir_problem(server.media_dir)
    if problem:
        found.append("[server] media_dir: `serve` would refuse to start: %s" % problem)
    return found


# --- what `serve` checks as it starts ---------------------------------------------------------

def media_dir_problem(path: Path, create: bool = False) -> Optional[str]:
    """Why wecomd could not store media files in `path` (None: it can), tried for real, so root,
    read-only filesystems and immutable directories are judged right. `create` (serve) makes a
    missing directory; without it (check) a missing one only needs a parent that can hold it."""
    path = Path(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                return "cannot create %s: %s is not a directory; change [server] media_dir" % (path, parent)
            if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
                return ("cannot create %s: %s is not writable; create it for %s, or change [server] media_dir"
                        % (path, parent, WHO))
            return None
        if not path.is_dir():
            return "%s is not a directory; change [server] media_dir" % path
        with tempfile.NamedTemporaryFile(dir=path, prefix=".wecomd-write-test-"):
            pass
    except OSError as exc:
        return "cannot write to %s (%s); make it writable for %s, or change [server] media_dir" % (
            path, exc.strerror or exc, WHO)
    return None


def prepare_media_dir(path: Path) -> None:
    """Create media_dir if missing and make sure files can be written there; else StartupError."""
    problem = media_dir_problem(path, create=True)
    if problem:
        raise StartupError("media_dir: %s" % problem)


def listen_problem(host: str, port: int, exc: OSError) -> str:
    """The one line for a port `serve` cannot bind."""
    hints = {
        errno.EADDRINUSE: "address already in use; stop the other process or change [server] listen",
        errno.EACCES: "permission denied (ports below 1024 need privileges); use a port above 1023 or "
                      "change [server] listen",
        errno.EADDRNOTAVAIL: "this machine has no such address; change [server] listen",
    }
    what = hints.get(exc.errno) or "%s; change [server] listen" % (exc.strerror or exc)
    return "cannot listen on %s:%d: %s" % ("[%s]" % host if ":" in host else host, port, what)


def database_problem(database: str, exc: Exception) -> str:
    """The one line for a database `serve` cannot open, migrate or write (read-only, missing directory)."""
    if "://" in database:
        todo = "check [server] database and that the database server lets wecomd in and write"
    else:
        todo = "make the database file and its directory writable for %s, or change [server] database" % WHO
    return "cannot use the database: %s; %s" % (" ".join(str(exc).split()), todo)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


