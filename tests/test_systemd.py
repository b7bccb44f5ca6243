"""The shipped systemd unit: an unprivileged, hardened service that `systemd-analyze verify` accepts."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys

import pytest

from support import ROOT

UNIT = ROOT / "systemd" / "wecomd.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_runs_unprivileged_with_a_state_directory_and_hardening():
    service = unit()["Service"]
    assert service["User"] == "wecomd" and service["Group"] == "wecomd"
    assert service["StateDirectory"] == "wecomd"
    assert service["ExecStart"].split()[1:] == ["serve", "-c", "/etc/wecomd/wecomd.conf"]
    assert service["EnvironmentFile"] == "-/etc/wecomd/wecomd.env"
    for option, value in {
        "NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true",
        "PrivateTmp": "true", "ReadWritePaths": "/var/lib/wecomd", "UMask": "0027",
        "Restart": "on-failure", "KillSignal": "SIGTERM",
    }.items():
        assert service[option] == value, option
    # SIGTERM drains for up to 25 s (app.DRAIN_SECONDS); systemd must wait longer than that.
    from wecomd.app import DRAIN_SECONDS

    assert int(service["TimeoutStopSec"]) > DRAIN_SECONDS


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # ExecStart must name an existing executable for verify: point it at this Python.
    text = UNIT.read_text().replace("/opt/wecomd/bin/wecomd serve", "%s -m wecomd serve" % sys.executable)
    copy = tmp_path / "wecomd.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wecomd.service" not in result.stderr, result.stderr


def test_readiness_and_reload_are_signalled_the_way_wecomd_does_them():
    service = unit()["Service"]
    # wecomd sends READY=1 itself once its port is open (wecomd/sdnotify.py, tests/test_sdnotify.py),
    # and only the main process may: rule commands run as its children.
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    # `systemctl reload` is SIGHUP; wecomd answers RELOADING=1 ... READY=1 around it.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(service["TimeoutStartSec"]) >= 60  # start-up runs the migrations of an upgrade


def test_hardening_keeps_what_wecomd_needs():
    service = unit()["Service"]
    for option, value in {
        "PrivateDevices": "true", "ProtectKernelTunables": "true", "ProtectKernelModules": "true",
        "ProtectControlGroups": "true", "RestrictSUIDSGID": "true", "LockPersonality": "true",
        "ProtectProc": "invisible", "RemoveIPC": "true", "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }.items():
        assert service[option] == value, option
    # AF_UNIX is how the READY=1 datagram reaches systemd; AF_INET/6 serve and reach WeCom.
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    lines = UNIT.read_text().splitlines()
    assert "SystemCallFilter=@system-service" in lines and "SystemCallFilter=~@privileged" in lines
    # Anything that would break Python or the rule commands stays out.
    for option in ("MemoryDenyWriteExecute", "PrivateNetwork", "IPAddressDeny", "DynamicUser"):
        assert option not in service, option


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path):
    text = UNIT.read_text().replace("/opt/wecomd/bin/wecomd serve", "%s -m wecomd serve" % sys.executable)
    copy = tmp_path / "wecomd.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True)
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    exposure = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert exposure, result.stdout + result.stderr
    level = float(exposure[0].split(":")[-1].split()[0])
    assert level <= 2.5, exposure[0]
