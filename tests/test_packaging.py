"""A plain (non-editable) `pip install .` into a fresh venv gives a working `wecomd` with its files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, free_port, wait_for_healthz


def test_pip_install_into_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.db*", "build", "*.egg-info", "__pycache__", "media"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", str(src)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    exe = str(venv / "bin/wecomd")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True, env=env).stdout.startswith("wecomd ")
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "from wecomd.paths import resource_dir as r, sample_config as s; "
         "print(r('templates')); print(r('static')); print(s().parent)"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    ).stdout.split()
    for folder, name in zip(where, ("base.html", "wecomd.css", "wecomd.conf")):
        assert "site-packages" in folder and (Path(folder) / name).is_file()
    port = free_port()
    conf = tmp_path / "wecomd.conf"
    conf.write_text((ROOT / "wecomd.conf").read_text(encoding="utf-8").replace("127.0.0.1:8080", "127.0.0.1:%d" % port), encoding="utf-8")
    proc = subprocess.Popen([exe, "serve", "-c", str(conf)], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_healthz("http://127.0.0.1:%d" % port, proc)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
