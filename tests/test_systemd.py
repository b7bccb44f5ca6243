"""The shipped systemd unit: an unprivileged, hardened service that `systemd-analyze verify` accepts."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

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
