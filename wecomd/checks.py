"""What `wecomd check` reports beyond load errors: a deployment with no app, and likely mistakes."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from wecomd.config import MIN_SECRET_LENGTH, AdminConfig, AppConfig, Config, ConfigError, ServerConfig, load

NO_APP = "no [app:NAME] section: wecomd would receive no callbacks"


def check(path: Union[str, Path], environ: Optional[Mapping[str, str]] = None) -> Tuple[List[str], List[str]]:
    """(errors, warnings) for a config file; `wecomd check` fails when errors is not empty.

    Errors are everything `config.load` refuses, plus a config without any app, which loads
    (the demo and tests use such configs) but cannot serve as a deployment.
    """
    try:
        config = load(path, environ)
    except ConfigError as exc:
        return exc.problems, []
    return ([] if config.apps else [NO_APP]), warnings(config)


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
    if server.media_dir.exists() and not server.media_dir.is_dir():
        found.append("[server] media_dir: %s is not a directory" % server.media_dir)
    return found


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


