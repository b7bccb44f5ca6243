"""Packaging and repository hygiene: `pip install .` and `pip install -e .` into fresh venvs give a
working `wecomd` with its files and no legacy-install warning; the repository stands on its own (its
test data inside it, a LICENSE, a CHANGELOG) and pytest's configuration reports skips and knows its
markers."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.server import free_port, wait_for_healthz

# What pip prints when it falls back to running setup.py itself (`setup.py develop`, `setup.py
# bdist_wheel`, `setup.py install`) instead of the PEP 517 build that pyproject.toml declares.
LEGACY = re.compile(r"DEPRECATION|legacy|\(setup\.py\)|setup\.py (develop|install|bdist_wheel)", re.IGNORECASE)


def tracked_copy(dest: Path) -> Path:
    """The files a clone of the current work would have: tracked, plus new ones git does not ignore."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=str(ROOT), capture_output=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout: %s" % listing.stderr.decode(errors="replace").strip())
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not in a clone of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_venv(path: Path) -> Path:
    """A new venv with `wheel` in it, as many are: pip then takes the legacy setup.py route for a
    project that declares no build (the warning this project must not cause)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = subprocess.run([str(path / "bin/pip"), "install", "--quiet", "wheel"], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return path


def pip_install(venv: Path, *args: str) -> str:
    """Run pip (not quiet: its build lines are what tells PEP 517 from legacy), return its output."""
    pip = subprocess.run([str(venv / "bin/pip"), "install", *args], capture_output=True, text=True, timeout=600)
    output = pip.stdout + pip.stderr
    assert pip.returncode == 0, output[-3000:]
    legacy = [line for line in output.splitlines() if LEGACY.search(line)]
    assert not legacy, "pip took the legacy route:\n" + "\n".join(legacy)
    assert "(pyproject.toml)" in output, output[-3000:]  # "Building wheel for wecomd (pyproject.toml)"
    return output


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def where(venv: Path, cwd: Path) -> list:
    """Where the installed wecomd finds its templates, static files and sample config."""
    return subprocess.run(
        [str(venv / "bin/python"), "-c", "from wecomd.paths import resource_dir as r, sample_config as s; "
         "print(r('templates')); print(r('static')); print(s().parent)"],
        capture_output=True, text=True, env=clean_env(), cwd=str(cwd), check=True,
    ).stdout.split()


def serve_once(exe: str, tmp_path: Path) -> None:
    """`wecomd serve` on the sample config answers /healthz, then stops cleanly on SIGTERM."""
    port = free_port()
    conf = tmp_path / "wecomd.conf"
    conf.write_text((ROOT / "wecomd.conf").read_text(encoding="utf-8").replace("127.0.0.1:8080", "127.0.0.1:%d" % port),
                    encoding="utf-8")
    proc = subprocess.Popen([exe, "serve", "-c", str(conf)], env=clean_env(), cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_healthz("http://127.0.0.1:%d" % port, proc)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv(tmp_path):
    src = tracked_copy(tmp_path / "src")
    venv = fresh_venv(tmp_path / "venv")
    pip_install(venv, str(src))
    exe = str(venv / "bin/wecomd")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True, env=clean_env()).stdout.startswith("wecomd ")
    for folder, name in zip(where(venv, tmp_path), ("base.html", "wecomd.css", "wecomd.conf")):
        assert "site-packages" in folder and (Path(folder) / name).is_file()
    # The licence travels with the package: its metadata names the file, and the file is there.
    meta = subprocess.run(
        [str(venv / "bin/python"), "-c", "import importlib.metadata as m; d = m.distribution('wecomd'); "
         "print(d.metadata['License'] or d.metadata['License-Expression']); "
         "print([str(f) for f in d.files if f.name == 'LICENSE'][0])"],
        capture_output=True, text=True, env=clean_env(), cwd=str(tmp_path), check=True,
    ).stdout.split()
    assert meta[0] == "MIT"
    installed = venv.glob("lib/python*/site-packages/" + meta[1])
    assert [p.read_text(encoding="utf-8") for p in installed] == [(ROOT / "LICENSE").read_text(encoding="utf-8")]
    serve_once(exe, tmp_path)


@pytest.mark.slow
def test_editable_install_runs_from_the_tree(tmp_path):
    src = tracked_copy(tmp_path / "src")
    venv = fresh_venv(tmp_path / "venv")
    output = pip_install(venv, "-e", str(src))
    assert "editable" in output.lower()
    exe = str(venv / "bin/wecomd")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True, env=clean_env()).stdout.startswith("wecomd ")
    # The package, its templates, static files and sample config are the tree's own, not copies.
    assert where(venv, tmp_path) == [str(src / "templates"), str(src / "static"), str(src)]
    module = subprocess.run([str(venv / "bin/python"), "-c", "import wecomd; print(wecomd.__file__)"],
                            capture_output=True, text=True, env=clean_env(), cwd=str(tmp_path), check=True).stdout
    assert Path(module.strip()) == src / "wecomd" / "__init__.py"
    serve_once(exe, tmp_path)


def test_the_build_is_declared_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^\[build-system\]\s*\nrequires = \["setuptools>=61", "wheel"\]\s*\n'
                     r'build-backend = "setuptools\.build_meta"$', text, re.MULTILINE), text
    assert (ROOT / "setup.py").is_file()  # the metadata and the custom build_py stay there


# --- the repository stands on its own -------------------------------------------------------------

# A path into the `shared/` folder beside the repository: "../shared", "shared/...", / "shared" /.
SHARED_READ = re.compile(r"""\.\./shared|["']shared["'/]""")


def test_nothing_reads_the_shared_folder_beside_the_repository():
    """A clone is tested on its own: no test, benchmark or module reaches for ../shared."""
    offenders = []
    for folder in ("tests", "wecomd", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if SHARED_READ.search(line):
                    offenders.append("%s:%d: %s" % (path.relative_to(ROOT), number, line.strip()))
    assert not offenders, "\n".join(offenders)
    assert (ROOT / "tests" / "data" / "wecom-vectors.json").is_file()


def test_the_vector_tests_pass_in_a_clone_with_nothing_beside_it(tmp_path):
    """A copy of the tracked files in a folder with no shared/ beside it runs the official-vector tests."""
    src = tracked_copy(tmp_path / "alone" / "wecomd")
    assert not (src.parent / "shared").exists()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-k", "vector or Vector",
         "tests/test_crypto.py", "tests/test_messages.py", "tests/test_callback.py"],
        cwd=str(src), env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"^\d+ passed", run.stdout.splitlines()[-1]), run.stdout[-3000:]


def test_license_matches_setup_py():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the wecomd authors" in text
    setup_py = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert 'license="MIT"' in setup_py and 'license_files=["LICENSE"]' in setup_py
    assert "LICENSE" in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").split()  # in the sdist too


def test_changelog_is_kept():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings and headings[0] == "Unreleased", headings
    unreleased = text.split("\n## Unreleased\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^- ", unreleased, re.MULTILINE), "the Unreleased section lists no change"


# --- pytest's own configuration -------------------------------------------------------------------

def pytest_settings() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser["tool:pytest"]


def test_pytest_reports_skips_and_refuses_unknown_markers():
    addopts = pytest_settings()["addopts"].split()
    assert any(o.startswith("-r") and "s" in o for o in addopts), addopts
    assert "--strict-markers" in addopts
    markers = {line.split(":")[0].strip() for line in pytest_settings()["markers"].strip().splitlines()}
    assert {"browser", "postgres", "slow"} <= markers


def collected(*args: str) -> set:
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0",
                          *args],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {line.split("::")[0] for line in run.stdout.splitlines() if "::" in line}


def test_the_markers_select_the_browser_postgres_and_slow_tests():
    assert collected("-m", "browser", "tests/test_browser.py", "tests/test_crypto.py") == {"tests/test_browser.py"}
    assert collected("-m", "postgres", "tests/store", "tests/test_crypto.py") == {"tests/store/test_store.py",
                                                                                "tests/store/test_team.py",
                                                                                "tests/store/test_assignments.py",
                                                                                "tests/store/test_kf_store.py"}
    assert collected("-m", "slow", "tests/test_crash.py", "tests/test_packaging.py", "tests/test_crypto.py") \
        == {"tests/test_crash.py", "tests/test_packaging.py"}
