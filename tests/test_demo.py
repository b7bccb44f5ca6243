"""`wecomd demo`, the README's first command: live traffic, media, rules and replies within seconds."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from support import ROOT
from support.server import free_port, wait_for_healthz
from wecomd import config
from wecomd.cli import demo


def test_sample_rules_are_the_shipped_ones_plus_a_live_webhook():
    rules = demo.sample_rules("http://127.0.0.1:1")
    assert {"rules", "rule:greet", "rule:backup", "rule:welcome", "rule:forward"} <= set(rules)
    assert rules["rule:forward"]["webhook"] == "http://127.0.0.1:1/demo/webhook"
    sample = config.load(ROOT / "wecomd.conf", {})
    assert {k[5:] for k in rules if k.startswith("rule:")} - {"forward"} == set(sample.rules)


def _opener():
    jar = urllib.request.HTTPCookieProcessor()
    return urllib.request.build_opener(jar), jar


@pytest.mark.slow  # waits for the demo's scripted traffic
def test_demo_shows_live_traffic_media_and_rules_within_seconds(tmp_path):
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = subprocess.Popen(
        [sys.executable, "-m", "wecomd", "demo", "--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path),
         "--password", "demo-pass-123"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
    )
    try:
        wait_for_healthz(url, proc)
        opener, jar = _opener()
        page = opener.open(url + "/login").read().decode()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({"username": "admin", "password": "demo-pass-123", "_xsrf": xsrf}).encode()
        assert opener.open(url + "/login", data=body).status == 200
        api = lambda path: json.loads(opener.open(url + path).read())  # noqa: E731
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = api("/api/messages?limit=100")["messages"]
            kinds = {r["msgtype"] for r in rows}
            media = [r for r in rows if (r["media"] or {}).get("status") == "stored"]
            api_replies = [r for r in rows if r["direction"] == "out" and r["operator"] == "rule:backup"]
            if {"text", "image", "event", "voice"} <= kinds and media and api_replies:
                break
            time.sleep(0.5)
        assert {"text", "image", "event", "voice"} <= kinds, kinds
        assert media, "no media was downloaded from the sandbox"
        assert api_replies and api_replies[0]["status"] == "sent"
        greeted = [r for r in rows if r["content"] == "你好"]
        assert greeted and any(a["rule"] == "greet" and a["path"] == "passive" for a in greeted[0]["automation"])
        forwarded = [a for r in rows for a in r["automation"] if a["rule"] == "forward"]
        assert forwarded and all(a["status"] == "ok" for a in forwarded)
        convs = api("/api/conversations")["conversations"]
        assert {"zhangsan", "lisi"} <= {c["user"] for c in convs}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "sign in as  admin / demo-pass-123" in out
    assert "Traceback" not in out


def _start_demo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wecomd", "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)


def _sign_in(url: str, password: str):
    opener, _ = _opener()
    page = opener.open(url + "/login").read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"username": "admin", "password": password, "_xsrf": xsrf}).encode()
    opener.open(url + "/login", data=body)
    return lambda path: json.loads(opener.open(url + path).read())  # raises 401/403 when not signed in


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    return out


def test_demo_dir_keeps_an_existing_config(tmp_path):
    """A second `demo --dir` runs on the first run's config as the user edited it, and never rewrites it."""
    port = free_port()
    first = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--password", "first-pass-1",
                        "--no-traffic")
    try:
        wait_for_healthz("http://127.0.0.1:%d" % port, first)
    finally:
        _stop(first)
    conf = tmp_path / "wecomd.conf"
    edited = conf.read_text(encoding="utf-8").replace("reply = 已收到，我们会尽快回复", "reply = 自定义的回复 kept")
    edited += "\n# my own note, kept\n"
    conf.write_text(edited, encoding="utf-8")
    before = conf.read_bytes()

    # The first run's sandbox port is taken now: this run's sandbox URL comes in as overrides.
    old_api = config.load(conf, {}).wecom.api_base
    squatter = socket.socket()
    # The first run's pulls (微信客服's startup pull) may leave the port in TIME_WAIT: taken all the same.
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", urllib.parse.urlsplit(old_api).port))
    squatter.listen()
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    second = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path))
    try:
        wait_for_healthz(url, second)
        api = _sign_in(url, "first-pass-1")  # the kept config's password, not a new one
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = api("/api/messages?limit=100")["messages"]
            replies = [r for r in rows if r["direction"] == "out" and r["content"] == "自定义的回复 kept"]
            forwarded = [a for r in rows for a in r["automation"] if a["rule"] == "forward" and a["status"] == "ok"]
            if replies and forwarded:
                break
            time.sleep(0.5)
        assert replies, "the edited reply = of the kept config did not answer"
        assert forwarded, "the kept webhook rule did not reach this run's sandbox"
    finally:
        out = _stop(second)
        squatter.close()
    assert conf.read_bytes() == before
    assert "kept from an earlier run" in out and "first-pass-1" not in out


def test_demo_dir_with_a_hand_written_config_uses_it_as_it_is(tmp_path):
    """A config that is not the demo's (no [app:demo]) is used, and left alone; --password still works."""
    from support.config import write_config

    conf = write_config(tmp_path)
    before = conf.read_bytes()
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--password", "override-pw-9")
    try:
        wait_for_healthz(url, proc)
        api = _sign_in(url, "override-pw-9")
        assert {a["name"] for a in api("/api/apps")["apps"]} == {"helpdesk", "quiet"}
    finally:
        out = _stop(proc)
    assert conf.read_bytes() == before
    assert "no simulated traffic" in out


def test_demo_makes_an_operator_and_a_viewer_and_names_its_users(tmp_path):
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--password", "demo-pass-123")
    try:
        logins = {}
        while len(logins) < 2:
            text = proc.stdout.readline()
            assert text, "the demo stopped before its banner"
            found = re.match(r"\s+or as\s+(\w+) / (\S+) \((\w+)\)", text)
            if found:
                logins[found.group(1)] = (found.group(2), found.group(3))
        assert {name: role for name, (_, role) in logins.items()} == {"operator": "operator", "viewer": "viewer"}
        wait_for_healthz(url, proc)
        for name, (password, role) in logins.items():
            opener, _ = _opener()
            page = opener.open(url + "/login").read().decode()
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
            body = urllib.parse.urlencode({"username": name, "password": password, "_xsrf": xsrf}).encode()
            opener.open(url + "/login", data=body)
            assert json.loads(opener.open(url + "/api/me").read())["role"] == role
        api = _sign_in(url, "demo-pass-123")
        deadline, names = time.monotonic() + 20, {}
        while time.monotonic() < deadline and names.get("zhangsan") != "张三":
            names = {c["user"]: c["user_name"] for c in api("/api/conversations")["conversations"]}
            time.sleep(0.3)
        assert names.get("zhangsan") == "张三", names
        assert api("/api/contact?app=demo&user=zhangsan")["departments"] == ["IT 支持部"]
    finally:
        out = _stop(proc)
    assert "Traceback" not in out
    # A second run on the same directory keeps the accounts and does not print passwords it does not know.
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--no-traffic")
    try:
        wait_for_healthz(url, proc)
    finally:
        out = _stop(proc)
    assert "or as      operator / the password an earlier run printed (operator)" in out


def test_demo_bot_streams_the_echo_models_answer(tmp_path):
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--no-traffic")
    try:
        wait_for_healthz(url, proc)
        bot = config.load(tmp_path / "wecomd.conf", {}).bots["assistant"]
        run = subprocess.run([sys.executable, "-m", "wecomd", "simulate", "--bot", url + "/callback/assistant",
                              "--token", bot.token, "--aes-key", bot.encoding_aes_key, "--content", "打印机 坏了",
                              "--poll", "0.2"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        out = _stop(proc)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if " streaming: " in line or " finish: " in line]
    assert len(lines) >= 3, run.stdout  # the answer grew over several polls
    assert lines[-1].rstrip().endswith("打印机 坏了") and " finish: " in lines[-1], run.stdout
    assert "智能机器人: %s/callback/assistant" % url in out
    assert bot.encoding_aes_key not in out


@pytest.mark.slow  # waits for the demo's scripted 微信客服 customers
def test_demo_kf_customers_have_nicknames_a_welcome_and_a_human_agent(tmp_path):
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--password", "demo-pass-123")
    try:
        wait_for_healthz(url, proc)
        api = _sign_in(url, "demo-pass-123")
        deadline, names, rows = time.monotonic() + 30, {}, []
        while time.monotonic() < deadline:
            names = {c["user"]: c["user_name"] for c in api("/api/conversations?app=kefu")["conversations"]}
            rows = api("/api/messages?app=kefu&limit=100")["messages"]
            welcomed = [r for r in rows if r["direction"] == "out" and r["rule"] == "kf-welcome" and r["status"] == "sent"]
            human = [r for r in rows if r["direction"] == "out" and r["operator"] == "zhangsan"]
            if {"小明", "莉莉"} <= set(names.values()) and welcomed and human:
                break
            time.sleep(0.5)
        assert {"wkDEMO/wmDemoXiaoming": "小明", "wkDEMO/wmDemoLili": "莉莉"}.items() <= names.items(), names
        assert welcomed and welcomed[0]["to_user"] == "wkDEMO/wmDemoXiaoming", rows
        assert human and human[0]["to_user"] == "wkDEMO/wmDemoLili" and human[0]["status"] == "sent"
    finally:
        out = _stop(proc)
    assert "微信客服: the account wkDEMO" in out


def test_simulate_kf_plays_a_customer_against_the_demo(tmp_path):
    """`wecomd simulate --kf` against `wecomd demo`: the customer's message goes into the demo's
    sandbox, the callback rings, the daemon pulls it; the welcome rule answers the --enter."""
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    proc = _start_demo("--listen", "127.0.0.1:%d" % port, "--dir", str(tmp_path), "--no-traffic",
                       "--password", "demo-pass-123")
    try:
        wait_for_healthz(url, proc)
        kefu = config.load(tmp_path / "wecomd.conf", {}).apps["kefu"]
        run = subprocess.run([sys.executable, "-m", "wecomd", "simulate", url + "/callback/kefu", "--no-verify",
                              "--token", kefu.token, "--aes-key", kefu.encoding_aes_key, "--corp-id", kefu.corp_id,
                              "--kf", "wkDEMO", "--customer", "wmDemoAwei", "-c", str(tmp_path / "wecomd.conf"),
                              "--enter", "--content", "价格能便宜点吗"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert run.returncode == 0, run.stdout + run.stderr
        api = _sign_in(url, "demo-pass-123")
        deadline, rows = time.monotonic() + 20, []
        while time.monotonic() < deadline:
            rows = api("/api/messages?app=kefu&user=wkDEMO%2FwmDemoAwei")["messages"]
            answers = {r["rule"]: r["status"] for r in rows if r["direction"] == "out"}
            if answers.get("kf-welcome") == "sent" and answers.get("kf-price") == "sent":
                break
            time.sleep(0.3)
        assert answers == {"kf-welcome": "sent", "kf-price": "sent"}, rows
        said = [r for r in rows if r["direction"] == "in" and r["msgtype"] == "text"]
        assert [(r["content"], r["user_name"]) for r in said] == [("价格能便宜点吗", "阿伟")]
    finally:
        _stop(proc)
    assert "POST kf_msg_or_event #2: 200" in run.stdout, run.stdout
