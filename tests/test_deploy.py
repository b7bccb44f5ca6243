"""docs/deploy.md, tested: its nginx block in a real nginx in front of a real wecomd, its config and
environment file, its check command, and its backup units.

The examples are taken from the document itself and adapted only mechanically (ports, certificate
and log paths, the interpreter), so the page cannot drift away from what works.
"""
from __future__ import annotations

import asyncio
import configparser
import http.client
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from support import ROOT
from support.config import ADMIN_PASSWORD, write_config
from support.deploydoc import (
    doc_config_sections, doc_env, env_targets, fenced, shell_line, titled, write_doc_config,
)
from support.peer import AES_KEY, AGENT_ID, CORP_ID, TOKEN, WecomPeer
from support.server import ServerProcess, free_port
from wecomd import config as configmod
from wecomd.wecom import samples

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NGINX = shutil.which("nginx", path=SBIN_PATH)
OPENSSL = shutil.which("openssl")
NO_NGINX = "nginx is not installed (CI: add `nginx` to the apt-get line in .ci/run)"


# --- the environment file and the config --------------------------------------------------------

def test_the_environment_file_names_real_options():
    names = doc_env()
    assert len(names) >= 4, names
    sections = doc_config_sections().sections()
    targets = env_targets([*configmod.FIXED_SECTIONS, *sections])
    unknown = sorted(set(names) - set(targets))
    assert not unknown, "docs/deploy.md names variables that override nothing: %s" % unknown
    # The app's secret, its token and key, and the cookie secret are the ones that must move.
    for section, option in (("app:main", "secret"), ("app:main", "token"),
                            ("app:main", "encoding_aes_key"), ("admin", "cookie_secret")):
        assert configmod.env_name(section, option) in names, (section, option)


def test_the_config_file_keeps_no_secret_but_the_password_hash():
    parser = doc_config_sections()
    for section in parser.sections():
        kind = "app:NAME" if section.startswith("app:") else section
        for option in parser.options(section):
            assert option in configmod.SCHEMA[kind], (section, option)
            if option == "database" and "://" not in parser[section][option]:
                continue  # a file path; a database URL could carry a password
            if configmod.SCHEMA[kind][option].secret:
                assert option == "password_hash", "[%s] %s belongs in wecomd.env" % (section, option)


def test_config_and_environment_file_load_as_the_service_sees_them(tmp_path):
    conf, _, environ = write_doc_config(tmp_path)
    cfg = configmod.load(conf, environ)
    assert cfg.ignored_env == ()
    assert (cfg.server.listen_host, cfg.server.listen_port) == ("127.0.0.1", 8080)
    assert cfg.server.xheaders is True
    # Absolute paths in the state directory: the unit makes nothing else writable.
    assert cfg.server.database == "/var/lib/wecomd/wecomd.db"
    assert cfg.server.media_dir == Path("/var/lib/wecomd/media")
    assert list(cfg.apps) == ["main"]
    for name in environ:
        section, option = env_targets([*configmod.FIXED_SECTIONS, "app:main"])[name]
        assert cfg.sources[(section, option)] == "environment " + name
    # nginx refuses what wecomd would refuse, and nothing it would accept.
    size = re.search(r"client_max_body_size (\d+)([km]?);", fenced("nginx")[0])
    assert size, "no client_max_body_size in the nginx block"
    assert int(size.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[size.group(2)] == cfg.server.max_body


def test_the_check_command_reads_the_secrets_from_the_environment_file(tmp_path):
    conf, env_file, _ = write_doc_config(tmp_path)
    line = shell_line("set -a", "wecomd check")
    line = line.replace("/etc/wecomd/wecomd.env", str(env_file)).replace("/etc/wecomd/wecomd.conf", str(conf))
    line = line.replace("/opt/wecomd/bin/wecomd", "%s -m wecomd" % sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOMD_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "%s: OK" % conf in result.stdout
    # Without the environment file the same config is incomplete: the secrets really moved.
    bare = subprocess.run([sys.executable, "-m", "wecomd", "check", "-c", str(conf)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert bare.returncode != 0 and "token" in bare.stdout + bare.stderr


# --- the backup units ---------------------------------------------------------------------------

def backup_units(directory: Path) -> tuple:
    service = directory / "wecomd-backup.service"
    timer = directory / "wecomd-backup.timer"
    service.write_text(titled("ini", "/etc/systemd/system/wecomd-backup.service"))
    timer.write_text(titled("ini", "/etc/systemd/system/wecomd-backup.timer"))
    return service, timer


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_backup_units_pass_systemd_analyze_verify(tmp_path):
    service, timer = backup_units(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wecomd-backup" not in result.stderr, result.stderr


def _has_backup_command() -> bool:
    probe = subprocess.run([sys.executable, "-m", "wecomd", "backup", "--help"], capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    return probe.returncode == 0


def test_the_backup_service_command_snapshots_a_running_wecomd(tmp_path):
    if not _has_backup_command():
        pytest.skip("`wecomd backup` is not there yet")
    service, _ = backup_units(tmp_path)
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(service)
    exec_start = parser["Service"]["ExecStart"]
    # What systemd makes of it: %% is %, $$ is $; then /bin/sh -c '...' runs the rest.
    match = re.fullmatch(r"/bin/sh -c '(.*)'", exec_start.replace("%%", "%").replace("$$", "$"))
    assert match, exec_start
    port = free_port()
    (tmp_path / "live").mkdir()
    server = ServerProcess(write_config(tmp_path / "live", port), port)
    try:
        peer = WecomPeer()
        request = peer.callback(samples.build("text", corp_id=CORP_ID, agent_id=AGENT_ID, content="备份我"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/callback/helpdesk?" + request.query, body=request.body)
        assert conn.getresponse().status == 200
        conn.close()
        backups = tmp_path / "backups"
        backups.mkdir()
        script = (match.group(1).replace("/opt/wecomd/bin/wecomd", "%s -m wecomd" % sys.executable)
                  .replace("/etc/wecomd/wecomd.conf", str(server.config))
                  .replace("/var/backups/wecomd", str(backups)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECOMD_")}
        env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        server.terminate()
    made = backups / ("wecomd-%s.db" % date.today().isoformat())
    assert [p.name for p in backups.iterdir()] == [made.name]
    with sqlite3.connect(str(made)) as db:
        assert db.execute("SELECT count(*) FROM message WHERE content = ?", ("备份我",)).fetchone() == (1,)


# --- nginx in front, over https -----------------------------------------------------------------

def make_certificates(directory: Path) -> tuple:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    def run(*args: str) -> None:
        result = subprocess.run([OPENSSL, *args], capture_output=True, text=True, cwd=str(directory))
        assert result.returncode == 0, result.stderr

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=wecomd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def adapt(block: str, *, https_port: int, http_port: int, upstream: int, cert: Path, key: Path,
          logs: Path) -> str:
    """The document's nginx block with only what a test must change: ports, certificate, log paths."""
    steps = [
        (r"(?m)^\s*listen \[::\]:\d+[^\n]*\n", ""),  # the test host may have no IPv6
        (r"listen 443 ssl;", "listen 127.0.0.1:%d ssl;" % https_port),
        (r"listen 80;", "listen 127.0.0.1:%d;" % http_port),
        (r"ssl_certificate\s+\S+;", "ssl_certificate %s;" % cert),
        (r"ssl_certificate_key\s+\S+;", "ssl_certificate_key %s;" % key),
        (r"127\.0\.0\.1:8080\b", "127.0.0.1:%d" % upstream),
        (r"/var/log/nginx/", "%s/" % logs),
    ]
    for pattern, replacement in steps:
        block, count = re.subn(pattern, lambda _m, r=replacement: r, block)
        assert count, "the nginx block in docs/deploy.md has no %r any more" % pattern
    for leftover in (":8080", "/etc/letsencrypt", "/var/log", " 443", " 80;"):
        assert leftover not in block, leftover
    return block


@dataclass
class Stack:
    https_port: int
    http_port: int
    ca: Path
    context: ssl.SSLContext
    wecomd: ServerProcess
    logs: Path

    @property
    def origin(self) -> str:
        return "https://127.0.0.1:%d" % self.https_port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                source: str = "127.0.0.1") -> tuple:
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.context, timeout=15,
                                           source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def wecomd_log_line(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.wecomd.output().splitlines() if needle in line]
            if lines:
                return lines[-1]
            time.sleep(0.05)
        raise AssertionError("no %r in wecomd's log:\n%s" % (needle, self.wecomd.output()))


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("nginx exited %s:\n%s" % (proc.returncode, log.read_text(errors="replace")))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nginx did not listen on %d:\n%s" % (port, log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not NGINX:
        pytest.skip(NO_NGINX)
    if not OPENSSL:
        pytest.skip("the openssl command is not installed (CI: add `openssl` to the apt-get line in .ci/run)")
    base = tmp_path_factory.mktemp("deploy")
    ca, cert, key = make_certificates(base)
    (base / "wecomd").mkdir()
    upstream = free_port()
    wecomd = ServerProcess(write_config(base / "wecomd", upstream, xheaders="yes"), upstream)
    https_port, http_port = free_port(), free_port()
    logs = base / "logs"
    logs.mkdir()
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / "temp" / temp).mkdir(parents=True)
    site = adapt(fenced("nginx")[0], https_port=https_port, http_port=http_port, upstream=upstream,
                 cert=cert, key=key, logs=logs)
    main = "\n".join([
        "user root;" if os.geteuid() == 0 else "",  # workers must reach the temp dirs under /tmp/pytest-of-root
        "worker_processes 1;",
        "pid %s/nginx.pid;" % base,
        "error_log %s/error.log notice;" % logs,
        "events { worker_connections 128; }",
        "http {",
        "    access_log off;",
        *("    %s_temp_path %s/temp/%s;" % (kind, base, kind.split("_")[0]) for kind in
          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        site,
        "}",
    ])
    conf = base / "nginx.conf"
    conf.write_text(main)
    startup_log = logs / "startup.log"
    args = [NGINX, "-p", str(base), "-c", str(conf)]
    help_text = subprocess.run([NGINX, "-h"], capture_output=True, text=True).stderr
    if "-e filename" in help_text:  # nginx 1.19.5+: keep it away from /var/log/nginx/error.log
        args += ["-e", str(logs / "error.log")]
    checked = subprocess.run(args + ["-t"], capture_output=True, text=True)
    assert checked.returncode == 0, "nginx -t refused the block from docs/deploy.md:\n%s\n%s" % (checked.stderr, site)
    with open(startup_log, "wb") as out:
        nginx = subprocess.Popen(args + ["-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(https_port, nginx, startup_log)
        context = ssl.create_default_context(cafile=str(ca))
        yield Stack(https_port, http_port, ca, context, wecomd, logs)
    finally:
        nginx.send_signal(signal.SIGTERM)
        try:
            nginx.wait(15)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        wecomd.terminate()


def test_url_verification_passes_the_percent_encoded_echostr_unchanged(stack):
    peer = WecomPeer()
    for n in range(1000):
        echo = str(1616140317555161061 + n)
        query, encrypted = peer.verification(echo=echo)
        if "+" in encrypted and "/" in encrypted:
            break
    assert "%2B" in query and "%2F" in query and "%3D" in query  # what a decoding proxy would spoil
    status, headers, body = stack.request("GET", "/callback/helpdesk?" + query)
    assert (status, body) == (200, echo.encode())
    assert headers["Content-Type"].startswith("text/plain")
    assert "type=verify" in stack.wecomd_log_line("outcome=verified")


def test_a_callback_through_nginx_gets_its_encrypted_passive_reply(stack):
    peer = WecomPeer()
    request = peer.callback(samples.build("text", corp_id=CORP_ID, agent_id=AGENT_ID, content="经由 nginx"))
    status, _, body = stack.request("POST", "/callback/helpdesk?" + request.query, body=request.body,
                                    headers={"Content-Type": "text/xml"})
    assert status == 200, body
    assert "已收到" in peer.read_reply(body)


def test_wecomd_simulate_against_the_https_url(stack):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSL_CERT_FILE": str(stack.ca)}
    result = subprocess.run(
        [sys.executable, "-m", "wecomd", "simulate", "%s/callback/helpdesk" % stack.origin, "--corp-id", CORP_ID,
         "--token", TOKEN, "--aes-key", AES_KEY, "--type", "text", "--content", "你好", "--repeat", "2"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "已收到" in result.stdout
    assert "ok 3, failed 0" in result.stdout  # the GET verification and both deliveries


def test_wecomd_sees_the_client_address_from_x_real_ip(stack):
    # The client comes from 127.0.0.5 (nginx's $remote_addr) and claims other addresses:
    # nginx replaces X-Real-IP, and wecomd logs what nginx saw.
    path = "/deploy-probe-%s" % uuid.uuid4().hex
    status, _, _ = stack.request("GET", path, headers={"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.7"},
                                 source="127.0.0.5")
    assert status == 404
    line = stack.wecomd_log_line(path)
    assert "(127.0.0.5)" in line, line


def _login(stack: Stack) -> str:
    status, headers, _ = stack.request("GET", "/login")
    assert status == 200
    xsrf = next(c.split(";")[0].split("=", 1)[1] for c in headers.get_all("Set-Cookie") if c.startswith("_xsrf="))
    form = urllib.parse.urlencode({"_xsrf": xsrf, "username": "admin", "password": ADMIN_PASSWORD, "next": "/"})
    status, headers, body = stack.request("POST", "/login", body=form.encode(), headers={
        "Cookie": "_xsrf=" + xsrf, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302, body
    session = [c for c in headers.get_all("Set-Cookie") if c.startswith("wecomd_session=")]
    assert session, headers
    # X-Forwarded-Proto reached wecomd: it knows the page is https and marks the cookie Secure.
    assert "Secure" in session[0] and "HttpOnly" in session[0], session[0]
    return session[0].split(";")[0]


def test_the_live_websocket_upgrades_through_nginx(stack):
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    url = "wss://127.0.0.1:%d/api/live" % stack.https_port

    async def anonymous() -> int:
        try:
            await websocket_connect(HTTPRequest(url, headers={"Origin": stack.origin}, ca_certs=str(stack.ca)))
        except HTTPClientError as exc:
            return exc.code
        return 101

    assert asyncio.run(anonymous()) == 403

    cookie = _login(stack)
    peer = WecomPeer()
    request = peer.callback(samples.build("text", corp_id=CORP_ID, agent_id=AGENT_ID, content="实时经由 nginx"))

    async def signed_in() -> str:
        ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie, "Origin": stack.origin},
                                                 ca_certs=str(stack.ca)))
        try:
            loop = asyncio.get_running_loop()
            status, _, _ = await loop.run_in_executor(None, lambda: stack.request(
                "POST", "/callback/helpdesk?" + request.query, body=request.body))
            assert status == 200
            return await asyncio.wait_for(ws.read_message(), 10)
        finally:
            ws.close()

    pushed = asyncio.run(signed_in())
    assert pushed is not None and "实时经由 nginx" in pushed
    assert "live: admin connected" in stack.wecomd_log_line("live: admin connected")


def test_nginx_enforces_max_body_and_keeps_query_strings_out_of_its_log(stack):
    conn = http.client.HTTPSConnection("127.0.0.1", stack.https_port, context=stack.context, timeout=15)
    try:
        conn.putrequest("POST", "/callback/helpdesk?msg_signature=x&timestamp=1&nonce=2")
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    peer = WecomPeer()
    query, _ = peer.verification()
    assert stack.request("GET", "/callback/helpdesk?" + query)[0] == 200
    log = (stack.logs / "wecomd.access.log").read_text()
    assert "GET /callback/helpdesk HTTP/1.1\" 200" in log
    for secret in ("msg_signature", "echostr", "nonce"):
        assert secret not in log


def test_plain_http_redirects_to_https_with_the_query_intact(stack):
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=15)
    try:
        conn.request("GET", "/callback/helpdesk?echostr=a%2Bb%2F")
        resp = conn.getresponse()
        assert resp.status == 301
        assert resp.headers["Location"] == "https://127.0.0.1/callback/helpdesk?echostr=a%2Bb%2F"
    finally:
        conn.close()
