"""Start-up errors (issue #9 item 12): a busy port, an unwritable media_dir or a read-only database
make `wecomd serve` print one line saying what to do and exit 1, never a traceback; `wecomd check`
warns about media_dir beforehand; the README's systemd recipe keeps its files in the state directory.

"Unwritable" is made real for every user: a path under a regular file is unusable even for root;
permissions (chmod) stop other users, and for root, which ignores them, the immutable attribute
(chattr +i) does, when the filesystem offers it.
"""
from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.config import write_config
from support.server import free_port, wait_for_healthz
from wecomd.store import Store

IS_ROOT = os.geteuid() == 0


def serve(config: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "wecomd", "serve", "-c", str(config)], capture_output=True,
                          text=True, env=environ, cwd=str(config.parent), timeout=30)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The failure, checked to be exit status 1 and exactly one line on stderr, without a traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@contextlib.contextmanager
def read_only(path: Path):
    """`path` (a file or a directory) made unwritable for the user running the tests."""
    if not IS_ROOT:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root, and chattr +i is not available here: root can write anyway")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --- a busy port ------------------------------------------------------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_busy_port_is_one_line_saying_what_to_do(tmp_path, busy_port):
    config = write_config(tmp_path, busy_port, log_level="warning")
    line = one_line(serve(config))
    assert line == ("wecomd: cannot listen on 127.0.0.1:%d: address already in use; stop the other process "
                    "or change [server] listen" % busy_port)
    # Checked before anything else started: the database was not even created.
    assert not (tmp_path / "wecomd.db").exists()


def test_at_the_default_level_the_error_is_the_last_line_and_has_no_traceback(tmp_path, busy_port):
    result = serve(write_config(tmp_path, busy_port))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith("wecomd: cannot listen on 127.0.0.1:%d: " % busy_port)


def test_under_systemd_the_error_line_has_the_error_priority(tmp_path, busy_port):
    config = write_config(tmp_path, busy_port, log_level="warning")
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as fh:
        stat = os.fstat(fh.fileno())
        environ = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": "%d:%d" % (stat.st_dev, stat.st_ino)}
        code = subprocess.run([sys.executable, "-m", "wecomd", "serve", "-c", str(config)], stdout=subprocess.DEVNULL,
                              stderr=fh, env=environ, timeout=60).returncode
    assert code == 1
    assert stderr.read_text().splitlines() == [
        "<3>wecomd: cannot listen on 127.0.0.1:%d: address already in use; stop the other process or change "
        "[server] listen" % busy_port]


# --- media_dir ----------------------------------------------------------------------------------

def test_a_media_dir_under_a_regular_file_stops_serve(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    config = write_config(tmp_path, free_port(), log_level="warning", media_dir=str(tmp_path / "afile" / "media"))
    line = one_line(serve(config))
    assert line.startswith("wecomd: media_dir: cannot write to %s (Not a directory); " % (tmp_path / "afile" / "media"))
    assert line.endswith("or change [server] media_dir")


def test_a_media_dir_that_cannot_be_written_stops_serve(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    config = write_config(tmp_path, free_port(), log_level="warning", media_dir=str(media))
    with read_only(media):
        line = one_line(serve(config))
    assert line.startswith("wecomd: media_dir: cannot write to %s (" % media), line
    assert line.endswith("; make it writable for the user wecomd runs as, or change [server] media_dir")


def test_a_missing_media_dir_is_created_when_its_parent_is_writable(tmp_path):
    port = free_port()
    media = tmp_path / "state" / "media"
    config = write_config(tmp_path, port, media_dir=str(media))
    proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(tmp_path))
    try:
        wait_for_healthz("http://127.0.0.1:%d" % port, proc)
        assert media.is_dir()
    finally:
        proc.terminate()
        proc.wait(30)


def test_check_warns_about_a_media_dir_serve_cannot_use(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def check(config: Path) -> str:
        result = subprocess.run([sys.executable, "-m", "wecomd", "check", "-c", str(config)], capture_output=True,
                                text=True, env=env, timeout=60)
        assert "Traceback" not in result.stderr
        return result.stdout

    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path, 0, media_dir=str(tmp_path / "afile" / "media"))
    assert ("warning: [server] media_dir: `serve` would refuse to start: cannot create %s: %s is not a directory; "
            "change [server] media_dir" % (tmp_path / "afile" / "media", tmp_path / "afile")) in check(config)

    media = tmp_path / "media"
    media.mkdir()
    config = write_config(tmp_path, 0, media_dir=str(media))
    assert "media_dir" not in check(config)
    assert not list(media.iterdir()), "check left its probe behind"
    with read_only(media):
        out = check(config)
    assert "warning: [server] media_dir: `serve` would refuse to start: cannot write to %s (" % media in out
    # A missing one is fine when it can be created; check itself creates nothing.
    config = write_config(tmp_path, 0, media_dir=str(tmp_path / "new" / "media"))
    assert "media_dir" not in check(config) and not (tmp_path / "new").exists()


# --- the database ---------------------------------------------------------------------------------

def test_a_database_in_a_directory_that_cannot_exist_stops_serve(tmp_path):
    (tmp_path / "afile").write_text("")
    database = tmp_path / "afile" / "wecomd.db"
    line = one_line(serve(write_config(tmp_path, free_port(), log_level="warning", database=str(database))))
    assert line.startswith("wecomd: cannot use the database: %s: " % database), line
    assert line.endswith("; make the database file and its directory writable for the user wecomd runs as, "
                         "or change [server] database")


def test_a_read_only_database_stops_serve(tmp_path):
    database = tmp_path / "wecomd.db"
    store = Store(str(database))
    store.migrate()
    store.close()
    config = write_config(tmp_path, free_port(), log_level="warning", database=str(database))
    with read_only(database):
        line = one_line(serve(config))
    assert re.fullmatch(r"wecomd: cannot use the database: %s: could not [a-z ]+: (attempt to write a readonly "
                        r"database|unable to open database file); make the database file and its directory "
                        r"writable for the user wecomd runs as, or change \[server\] database"
                        % re.escape(str(database)), line), line


# --- the README's recipe ----------------------------------------------------------------------

def test_the_readme_systemd_recipe_keeps_database_and_media_in_the_state_directory():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run as a systemd service", 1)[1].split("\n## ", 1)[0]
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "systemd" / "wecomd.service")
    state = "/var/lib/" + unit["Service"]["StateDirectory"]
    # The unit's own settings are quoted as they are.
    assert "StateDirectory=%s" % unit["Service"]["StateDirectory"] in section
    # wecomd init writes relative paths (next to the config, in /etc/wecomd, which the unit cannot
    # write): the recipe must move both into the state directory, as docs/deploy.md does.
    assert re.search(r"database = %s/wecomd\.db" % re.escape(state), section), section
    assert re.search(r"media_dir = %s/media" % re.escape(state), section), section
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "database = %s/wecomd.db" % state in deploy and "media_dir = %s/media" % state in deploy


def test_the_readme_recipe_moves_what_wecomd_init_writes_into_the_state_directory(tmp_path):
    """The recipe's own lines, run on a fresh `wecomd init` config, as written (paths redirected)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run as a systemd service", 1)[1].split("\n## ", 1)[0]
    script = re.search(r"```sh\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    sed = next(line for line in script.splitlines() if line.startswith("sudo sed "))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "wecomd", "init", str(tmp_path)], check=True, capture_output=True, env=env)
    conf = tmp_path / "wecomd.conf"
    command = sed[len("sudo "):].replace("/etc/wecomd/wecomd.conf", str(conf))
    subprocess.run(["/bin/sh", "-c", command], check=True)
    from wecomd import config as configmod

    cfg = configmod.load(conf, {})
    assert cfg.server.database == "/var/lib/wecomd/wecomd.db"
    assert cfg.server.media_dir == Path("/var/lib/wecomd/media")
