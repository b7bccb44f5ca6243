"""`wecomd init --bot`, `check` and `doctor` with 智能机器人 sections, as an operator runs them."""
from __future__ import annotations

import json

from support.cli import wecomd
from wecomd import config
from wecomd.cli import envfile

BOT = ("\n[bot:assistant]\ntoken = BotToken0123456789\n"
       "encoding_aes_key = abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\n")


def test_init_writes_bot_sections_that_load_and_their_secrets_to_the_env_file(tmp_path):
    run = wecomd("init", str(tmp_path), "--bot", "assistant", "--bot", "team2", "--env-file", str(tmp_path / "env"))
    assert run.returncode == 0, run.stderr
    assert "bot assistant: enter https://<your host>/callback/assistant" in run.stdout
    env = envfile.environment(str(tmp_path / "env"), {})
    assert {"WECOMD_BOT_ASSISTANT_TOKEN", "WECOMD_BOT_ASSISTANT_ENCODING_AES_KEY", "WECOMD_BOT_TEAM2_TOKEN"} <= set(env)
    text = (tmp_path / "wecomd.conf").read_text()
    assert env["WECOMD_BOT_ASSISTANT_TOKEN"] not in text
    loaded = config.load(tmp_path / "wecomd.conf", env)
    assert list(loaded.bots) == ["assistant", "team2"]
    assert loaded.bots["assistant"].token == env["WECOMD_BOT_ASSISTANT_TOKEN"]


def test_init_refuses_bad_or_clashing_bot_names(tmp_path):
    for names in (["bad name"], ["main"], ["x", "x"]):
        args = [arg for name in names for arg in ("--bot", name)]
        run = wecomd("init", str(tmp_path / "d"), *args)
        assert run.returncode == 2, (names, run.stdout)
        assert not (tmp_path / "d" / "wecomd.conf").exists()


def test_check_accepts_a_bot_only_config_and_doctor_lists_the_bot(tmp_path):
    conf = tmp_path / "wecomd.conf"
    conf.write_text("[server]\ndatabase = wecomd.db\n" + BOT, encoding="utf-8")
    checked = wecomd("check", "-c", str(conf))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doctor = wecomd("doctor", "-c", str(conf), "--json", "--timeout", "1")
    report = json.loads(doctor.stdout)
    bot = [check for check in report["checks"] if check["name"] == "bot:assistant"]
    assert bot and bot[0]["status"] == "ok" and "/callback/assistant" in bot[0]["message"]
    assert "BotToken0123456789" not in doctor.stdout
    conf.write_text("[server]\ndatabase = wecomd.db\n", encoding="utf-8")
    assert wecomd("check", "-c", str(conf)).returncode == 1
