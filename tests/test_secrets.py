"""Secrets outside the config (#9 item 13): `init --env-file`, `<secret>_file` and WECOMD_..._FILE
(systemd credentials), environment overrides of [rule:NAME] webhook_secret, and `check`/`doctor
--env-file`, through real files, real subprocesses and a real server."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support import ROOT
from support.config import API_TOKEN, APP_SECRET, admin_hash
from support.peer import AES_KEY, AGENT_ID, CORP_ID, TOKEN, WecomPeer
from support.server import ServerProcess, free_port
from wecomd import config
from wecomd.cli import envfile
from wecomd.wecom import samples
from wecomd.workers.webhooks import SIGNATURE_HEADER, verify

WEBHOOK_SECRET = "whsec-from-a-credential-0123456789"


def wecomd(*args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "wecomd", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def bare_config(directory: Path, app: str = "", admin: str = "", rule: str = "", port: int = 0) -> Path:
    """A config whose [app:helpdesk] carries no secret unless `app` adds lines."""
    text = ("[server]\nlisten = 127.0.0.1:%d\n\n[admin]\nusername = admin\n%s\n\n[app:helpdesk]\ncorp_id = %s\n"
            "agent_id = %s\n%s\n%s" % (port, admin, CORP_ID, AGENT_ID, app, rule))
    path = directory / "wecomd.conf"
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def load_problems(path: Path, environ: dict) -> list:
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ)
    return caught.value.problems


# --- <secret>_file in the INI and WECOMD_..._FILE ----------------------------------------------

def test_every_secret_option_has_a_file_form_and_an_environment_form(tmp_path):
    """Each secret of the schema read from a credential file, by absolute path in the INI."""
    creds = tmp_path / "creds"
    values = {("admin", "password_hash"): admin_hash(), ("admin", "cookie_secret"): "c" * 40,
              ("admin", "api_token"): API_TOKEN, ("admin", "metrics_token"): "m" * 40,
              ("app:helpdesk", "token"): TOKEN, ("app:helpdesk", "encoding_aes_key"): AES_KEY,
              ("app:helpdesk", "secret"): APP_SECRET, ("server", "database"): str(tmp_path / "elsewhere.db")}
    secret_options = {(section, option) for section in ("server", "admin", "app:helpdesk")
                      for option in config.secret_options(section)}
    assert secret_options == set(values)  # the test covers every secret there is
    lines = {}
    for (section, option), value in values.items():
        secret_file(creds / ("%s.%s" % (section.replace(":", "_"), option)), value + "\n")
        lines.setdefault(section, []).append("%s_file = %s" % (option, creds / ("%s.%s" % (
            section.replace(":", "_"), option))))
    text = "\n".join("[%s]\n%s\n" % (section, "\n".join(options)) for section, options in lines.items())
    path = tmp_path / "wecomd.conf"
    path.write_text(text.replace("[app:helpdesk]\n", "[app:helpdesk]\ncorp_id = %s\nagent_id = 1\n" % CORP_ID),
                    encoding="utf-8")
    loaded = config.load(path, {})
    got = {("admin", o): getattr(loaded.admin, o) for o in ("password_hash", "cookie_secret", "api_token",
                                                             "metrics_token")}
    got.update({("app:helpdesk", o): getattr(loaded.apps["helpdesk"], o) for o in ("token", "encoding_aes_key",
                                                                                   "secret")})
    got[("server", "database")] = loaded.server.database
    assert got == values  # one trailing newline dropped from each
    assert loaded.sources[("app:helpdesk", "token")].startswith("file %s" % creds)

    # the same through WECOMD_..._FILE, with the INI holding none of them
    bare = bare_config(tmp_path)
    environ = {config.env_name(section, option + "_file"): str(creds / ("%s.%s" % (section.replace(":", "_"),
                                                                                  option)))
               for section, option in values}
    loaded = config.load(bare, environ)
    assert loaded.apps["helpdesk"].token == TOKEN and loaded.admin.metrics_token == "m" * 40
    assert loaded.server.database == values[("server", "database")]
    assert "WECOMD_APP_HELPDESK_TOKEN_FILE" in loaded.sources[("app:helpdesk", "token")]
    assert loaded.ignored_env == ()


def test_relative_file_names_come_from_the_credentials_directory(tmp_path):
    """systemd's LoadCredential=token:/etc/... puts the file in $CREDENTIALS_DIRECTORY."""
    creds = tmp_path / "run-credentials"
    secret_file(creds / "token", TOKEN + "\n")
    secret_file(creds / "aes", AES_KEY)
    secret_file(tmp_path / "aes", "not the one")
    path = bare_config(tmp_path, app="token_file = token\nencoding_aes_key_file = aes")
    loaded = config.load(path, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert (loaded.apps["helpdesk"].token, loaded.apps["helpdesk"].encoding_aes_key) == (TOKEN, AES_KEY)
    # Without $CREDENTIALS_DIRECTORY a relative name is taken from the config file's directory, like database.
    secret_file(tmp_path / "token", TOKEN)
    secret_file(tmp_path / "aes", AES_KEY)
    loaded = config.load(path, {})
    assert loaded.apps["helpdesk"].token == TOKEN
    # And from the environment: WECOMD_..._FILE=token
    loaded = config.load(bare_config(tmp_path, app="encoding_aes_key = %s" % AES_KEY),
                         {"CREDENTIALS_DIRECTORY": str(creds), "WECOMD_APP_HELPDESK_TOKEN_FILE": "token"})
    assert loaded.apps["helpdesk"].token == TOKEN


def test_only_one_trailing_newline_is_dropped(tmp_path):
    secret_file(tmp_path / "cookie", " spaced secret \n\n")
    secret_file(tmp_path / "crlf", "crlf-secret\r\n")
    path = bare_config(tmp_path, admin="cookie_secret_file = cookie\napi_token_file = crlf",
                       app="token = %s\nencoding_aes_key = %s" % (TOKEN, AES_KEY))
    loaded = config.load(path, {})
    assert loaded.admin.cookie_secret == " spaced secret \n"
    assert loaded.admin.api_token == "crlf-secret"


def test_the_environment_wins_over_the_file_in_either_form(tmp_path):
    secret_file(tmp_path / "token.ini", "FromTheIniFile")
    secret_file(tmp_path / "token.env", "FromTheEnvFile")
    with_file = bare_config(tmp_path, app="token_file = token.ini\nencoding_aes_key = %s" % AES_KEY)
    assert config.load(with_file, {}).apps["helpdesk"].token == "FromTheIniFile"
    assert config.load(with_file, {"WECOMD_APP_HELPDESK_TOKEN": "FromTheEnv"}).apps["helpdesk"].token == "FromTheEnv"
    with_value = bare_config(tmp_path, app="token = FromTheIni\nencoding_aes_key = %s" % AES_KEY)
    loaded = config.load(with_value, {"WECOMD_APP_HELPDESK_TOKEN_FILE": str(tmp_path / "token.env")})
    assert loaded.apps["helpdesk"].token == "FromTheEnvFile"


def test_a_secret_and_its_file_together_are_a_problem(tmp_path):
    secret_file(tmp_path / "token", TOKEN)
    path = bare_config(tmp_path, app="token = %s\ntoken_file = token\nencoding_aes_key = %s" % (TOKEN, AES_KEY))
    [problem] = load_problems(path, {})
    assert "[app:helpdesk] token_file" in problem and "[app:helpdesk] token is set too" in problem
    [problem] = load_problems(bare_config(tmp_path, app="encoding_aes_key = %s" % AES_KEY),
                              {"WECOMD_APP_HELPDESK_TOKEN": TOKEN,
                               "WECOMD_APP_HELPDESK_TOKEN_FILE": str(tmp_path / "token")})
    assert "WECOMD_APP_HELPDESK_TOKEN_FILE" in problem and "environment WECOMD_APP_HELPDESK_TOKEN is set too" in problem


def test_unusable_files_are_named_and_their_contents_never_shown(tmp_path):
    secret_file(tmp_path / "bad-token", "has-dash-SECRETVALUE\n")
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "latin1").write_bytes(b"caf\xe9SECRETVALUE")
    (tmp_path / "huge").write_bytes(b"SECRETVALUE" * 10000)
    path = bare_config(tmp_path, app="token_file = bad-token\nencoding_aes_key_file = missing\nsecret_file = "
                       "a-directory", admin="cookie_secret_file = latin1\napi_token_file = huge\nmetrics_token_file =")
    found = load_problems(path, {})
    text = "\n".join(found)
    assert "SECRETVALUE" not in text
    conf = str(path)
    expected = [
        "%s: [admin] cookie_secret_file: %s: not UTF-8 text (byte 3)" % (conf, tmp_path / "latin1"),
        "%s: [admin] api_token_file: %s: larger than 65536 bytes: not a secret" % (conf, tmp_path / "huge"),
        "%s: [admin] metrics_token_file: empty: name the file that holds [admin] metrics_token" % conf,
        "%s: [app:helpdesk] encoding_aes_key_file: %s: no such file" % (conf, tmp_path / "missing"),
        "%s: [app:helpdesk] secret_file: %s: a directory, not a file" % (conf, tmp_path / "a-directory"),
    ]
    for line in expected:
        assert line in found, (line, found)
    token = [p for p in found if "must be 1 to 32 characters" in p]
    assert token and token[0].startswith("file %s (from %s: [app:helpdesk] token_file)" % (tmp_path / "bad-token", conf))
    # a missing file named in the environment names the variable
    [problem] = load_problems(bare_config(tmp_path, app="token = %s\nencoding_aes_key = %s" % (TOKEN, AES_KEY)),
                              {"WECOMD_APP_HELPDESK_SECRET_FILE": "/nonexistent/secret"})
    assert problem == "environment WECOMD_APP_HELPDESK_SECRET_FILE: /nonexistent/secret: no such file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_an_unreadable_file_says_so(tmp_path):
    secret_file(tmp_path / "token", TOKEN).chmod(0)
    [problem] = load_problems(bare_config(tmp_path, app="token_file = token\nencoding_aes_key = %s" % AES_KEY), {})
    assert problem.endswith("%s: cannot read: Permission denied" % (tmp_path / "token"))


def test_file_forms_exist_only_for_secrets(tmp_path):
    secret_file(tmp_path / "reply", "hi")
    [problem] = load_problems(bare_config(tmp_path, app="token = %s\nencoding_aes_key = %s\nreply_file = reply"
                                          % (TOKEN, AES_KEY)), {})
    assert "[app:helpdesk] reply_file: unknown option" in problem
    loaded = config.load(bare_config(tmp_path, app="token = %s\nencoding_aes_key = %s" % (TOKEN, AES_KEY)),
                         {"WECOMD_APP_HELPDESK_REPLY_FILE": "reply"})
    assert loaded.ignored_env == ("WECOMD_APP_HELPDESK_REPLY_FILE",)


# --- [rule:NAME] webhook_secret ------------------------------------------------------------------

RULE = "[rule:forward]\nwhen = any\nwebhook = %s\n"


def test_webhook_secret_from_the_environment_and_from_a_file(tmp_path):
    app = "token = %s\nencoding_aes_key = %s" % (TOKEN, AES_KEY)
    path = bare_config(tmp_path, app=app, rule=RULE % "http://127.0.0.1:9/hook" + "webhook_secret = in-the-ini\n")
    assert config.load(path, {}).rules["forward"]["webhook_secret"] == "in-the-ini"
    loaded = config.load(path, {"WECOMD_RULE_FORWARD_WEBHOOK_SECRET": "from-env"})
    assert loaded.rules["forward"]["webhook_secret"] == "from-env"
    assert loaded.sources[("rule:forward", "webhook_secret")] == "environment WECOMD_RULE_FORWARD_WEBHOOK_SECRET"
    assert loaded.ignored_env == ()
    secret_file(tmp_path / "creds" / "hook", WEBHOOK_SECRET + "\n")
    loaded = config.load(path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
                                "WECOMD_RULE_FORWARD_WEBHOOK_SECRET_FILE": "hook"})
    assert loaded.rules["forward"]["webhook_secret"] == WEBHOOK_SECRET
    in_ini = bare_config(tmp_path, app=app, rule=RULE % "http://127.0.0.1:9/hook" + "webhook_secret_file = creds/hook\n")
    assert config.load(in_ini, {}).rules["forward"]["webhook_secret"] == WEBHOOK_SECRET
    [problem] = load_problems(in_ini, {"WECOMD_RULE_FORWARD_WEBHOOK_SECRET_FILE": "/nonexistent"})
    assert problem == "environment WECOMD_RULE_FORWARD_WEBHOOK_SECRET_FILE: /nonexistent: no such file"
    # the environment cannot create a rule, as it cannot create an app
    assert config.load(path, {"WECOMD_RULE_OTHER_WEBHOOK_SECRET": "x"}).ignored_env == (
        "WECOMD_RULE_OTHER_WEBHOOK_SECRET",)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_a_served_webhook_is_signed_with_the_secret_from_a_credential(tmp_path, monkeypatch):
    """The whole way: a systemd-style credentials directory, WECOMD_RULE_..._FILE, `wecomd serve`,
    a callback, and a webhook whose signature verifies with that secret."""
    received: list = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Hook", (_Hook,), {"received": received}))
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    creds = tmp_path / "credentials"
    secret_file(creds / "webhook", WEBHOOK_SECRET + "\n")
    secret_file(creds / "token", TOKEN + "\n")
    port = free_port()
    path = bare_config(tmp_path, port=port, app="token_file = token\nencoding_aes_key = %s" % AES_KEY,
                       rule=RULE % ("http://127.0.0.1:%d/hook" % hook.server_address[1]))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("WECOMD_RULE_FORWARD_WEBHOOK_SECRET_FILE", "webhook")
    server = ServerProcess(path, port)
    try:
        req = WecomPeer().callback(samples.build("text", corp_id=CORP_ID, agent_id=AGENT_ID, content="转发我"))
        with urllib.request.urlopen(urllib.request.Request("%s/callback/helpdesk?%s" % (server.url, req.query),
                                                           data=req.body), timeout=10) as resp:
            assert resp.status == 200
        for _ in range(100):
            if received:
                break
            threading.Event().wait(0.1)
    finally:
        assert server.terminate() == 0
        hook.shutdown()
    assert received, server.output()
    headers, body = received[0]
    assert verify(WEBHOOK_SECRET, body, headers[SIGNATURE_HEADER])
    assert json.loads(body)["message"]["content"] == "转发我"
    assert WEBHOOK_SECRET not in server.output() and TOKEN not in server.output()


# --- the environment file: reading it as systemd does ---------------------------------------------

def test_the_environment_file_is_read_as_systemd_reads_it():
    text = ("# a comment\n ; another\n\nA=plain\nB = spaced value   \nC='single $x \"q\"'\n"
            "D=\"dq \\$HOME \\\" \\\\ \\n kept\"\nE=ab'cd'\nF='x' y\nG=multi\\\nline\nH=\"two\nlines\"\n"
            "I=\r\nJ=later\nJ=wins\r\n")
    found, problems = envfile.parse(text)
    assert problems == []
    assert found == {"A": "plain", "B": "spaced value", "C": "single $x \"q\"", "D": "dq $HOME \" \\ \\n kept",
                     "E": "ab'cd'", "F": "xy", "G": "multiline", "H": "two\nlines", "I": "", "J": "wins"}


def test_environment_file_mistakes_are_reported_by_line_without_values():
    found, problems = envfile.parse("A=1\nexport B=SECRETVALUE\nSECRETWORD\n9C=x\nD='SECRETVALUE\n")
    assert found == {"A": "1"}
    assert problems == [
        "line 2: 'export B' is not a variable name (systemd ignores the line; write NAME=value, without `export`)",
        "line 3: not NAME=value",
        "line 4: '9C' is not a variable name (systemd ignores the line; write NAME=value, without `export`)",
        "line 5: a quote is never closed"]
    assert "SECRETVALUE" not in "".join(problems)


def test_a_written_environment_file_reads_back_in_wecomd_and_in_sh(tmp_path):
    values = {"WECOMD_ADMIN_PASSWORD_HASH": admin_hash(), "PLAIN": "abc-DEF_1.2", "QUOTE": "it's \"$x\" `y` \\",
              "SPACES": " a b ", "EMPTY": ""}
    path = tmp_path / "wecomd.env"
    path.write_text(envfile.render(values, header="a header\nof two lines"), encoding="utf-8")
    assert envfile.load(path) == values
    shell = subprocess.run(["sh", "-c", "set -a && . \"$0\" && exec \"$1\" -c 'import json, os, sys; "
                            "print(json.dumps(dict(os.environ)))'", str(path), sys.executable],
                           capture_output=True, text=True, env={}, timeout=30)
    seen = json.loads(shell.stdout)
    assert {name: seen.get(name) for name in values} == values


# --- init --env-file, check --env-file, doctor --env-file -----------------------------------------

def test_init_with_an_env_file_keeps_every_secret_out_of_the_config(tmp_path):
    env_file = tmp_path / "etc" / "wecomd.env"
    env_file.parent.mkdir()
    result = wecomd("init", str(tmp_path / "etc"), "--env-file", str(env_file))
    assert result.returncode == 0, result.stderr
    password = result.stdout.split("admin login: admin / ")[1].split()[0]
    conf = tmp_path / "etc" / "wecomd.conf"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and oct(conf.stat().st_mode & 0o777) == "0o600"
    secrets = envfile.load(env_file)
    assert set(secrets) == {"WECOMD_ADMIN_PASSWORD_HASH", "WECOMD_ADMIN_COOKIE_SECRET", "WECOMD_APP_MAIN_TOKEN",
                            "WECOMD_APP_MAIN_ENCODING_AES_KEY"}
    text = conf.read_text()
    assert not any(value in text for value in secrets.values())
    assert "WECOMD_APP_MAIN_TOKEN" in text  # the config says where each secret went
    assert "--env-file" in result.stdout

    without = wecomd("check", "-c", str(conf))
    assert without.returncode == 1 and "[app:main] token: missing" in without.stdout
    checked = wecomd("check", "-c", str(conf), "--env-file", str(env_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not any(value in checked.stdout + checked.stderr for value in secrets.values())

    loaded = config.load(conf, secrets)
    from wecomd import passwords

    assert passwords.verify_password(password, loaded.admin.password_hash)
    assert len(loaded.apps["main"].encoding_aes_key) == 43 and len(loaded.admin.cookie_secret) >= 32

    again = wecomd("init", str(tmp_path / "other"), "--env-file", str(env_file))
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites the secrets silently
    assert not (tmp_path / "other" / "wecomd.conf").exists()
    assert envfile.load(env_file) == secrets


def test_an_init_env_file_serves_and_signs_in(tmp_path):
    """The generated pair runs as systemd would run it: the file's variables in the environment."""
    env_file = tmp_path / "wecomd.env"
    result = wecomd("init", str(tmp_path), "--env-file", str(env_file))
    password = result.stdout.split("admin login: admin / ")[1].split()[0]
    conf = tmp_path / "wecomd.conf"
    port = free_port()
    conf.write_text(conf.read_text().replace("listen = 127.0.0.1:8080", "listen = 127.0.0.1:%d" % port))
    secrets = envfile.load(env_file)
    old = dict(os.environ)
    os.environ.update(secrets)
    try:
        server = ServerProcess(conf, port)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = opener.open(server.url + "/login", timeout=10).read().decode()
        xsrf = page.split('name="_xsrf" value="')[1].split('"')[0]
        body = urllib.parse.urlencode({"username": "admin", "password": password, "_xsrf": xsrf}).encode()
        opener.open(server.url + "/login", data=body, timeout=30)
        assert json.loads(opener.open(server.url + "/api/apps", timeout=10).read())["apps"][0]["name"] == "main"
    finally:
        assert server.terminate() == 0


def test_check_and_doctor_take_an_env_file(tmp_path):
    conf = bare_config(tmp_path)
    env_file = tmp_path / "wecomd.env"
    env_file.write_text("# secrets\nWECOMD_APP_HELPDESK_TOKEN=%s\nWECOMD_APP_HELPDESK_ENCODING_AES_KEY='%s'\n"
                        "WECOMD_ADMIN_PASSWORD_HASH='%s'\nWECOMD_ADMIN_COOKIE_SECRET=\"%s\"\n"
                        "WECOMD_WECOM_IP_ECHO_URL=\n" % (TOKEN, AES_KEY, admin_hash(), "k" * 40))
    env_file.chmod(0o600)
    assert wecomd("check", "-c", str(conf)).returncode == 1
    checked = wecomd("check", "-c", str(conf), "--env-file", str(env_file))
    assert checked.returncode == 0, checked.stdout
    assert "password_hash is empty" not in checked.stdout  # the hash came from the file

    doctor = wecomd("doctor", "-c", str(conf), "--env-file", str(env_file), "--json", "--timeout", "2")
    report = json.loads(doctor.stdout)
    config_checks = [c for c in report["checks"] if c["name"] == "config"]
    assert config_checks[0]["status"] == "ok", config_checks
    assert not any(c["status"] == "fail" for c in config_checks), config_checks
    bare = json.loads(wecomd("doctor", "-c", str(conf), "--json", "--timeout", "2").stdout)
    assert any("token: missing" in c["message"] for c in bare["checks"] if c["status"] == "fail")
    for secret in (TOKEN, AES_KEY, "k" * 40):
        assert secret not in doctor.stdout + doctor.stderr + checked.stdout

    # a broken environment file: said clearly, by line, without its values
    env_file.write_text("WECOMD_APP_HELPDESK_TOKEN=%s\nexport WECOMD_X=SECRETVALUE\n" % TOKEN)
    broken = wecomd("check", "-c", str(conf), "--env-file", str(env_file))
    assert broken.returncode == 2 and "line 2" in broken.stderr and "export" in broken.stderr
    assert "SECRETVALUE" not in broken.stderr and "Traceback" not in broken.stderr
    missing = wecomd("check", "-c", str(conf), "--env-file", str(tmp_path / "nope.env"))
    assert missing.returncode == 2 and "nope.env: cannot read the environment file" in missing.stderr
    doctor = wecomd("doctor", "-c", str(conf), "--env-file", str(tmp_path / "nope.env"))
    assert doctor.returncode == 1 and "nope.env: cannot read the environment file" in doctor.stdout


def test_the_env_file_can_name_the_config(tmp_path):
    """WECOMD_CONFIG in the environment file finds the config, as under systemd."""
    conf = bare_config(tmp_path, app="token = %s\nencoding_aes_key = %s" % (TOKEN, AES_KEY))
    env_file = tmp_path / "wecomd.env"
    env_file.write_text("WECOMD_CONFIG=%s\n" % conf)
    result = wecomd("check", "--env-file", str(env_file), cwd=str(tmp_path.parent))
    assert result.returncode == 0 and str(conf) in result.stdout, result.stdout + result.stderr
