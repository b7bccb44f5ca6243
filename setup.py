"""Packaging for wecomd: the package plus templates/ and static/ as package data."""
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """Ship the sample wecomd.conf inside the package: `wecomd demo` uses its example rules.

    An editable install (`pip install -e .`) runs the package from this tree, where
    `wecomd.paths.sample_config` finds the sample at the root: nothing to copy then."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "wecomd"
        self.mkpath(str(target))
        self.copy_file(str(HERE / "wecomd.conf"), str(target / "wecomd.conf"))

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "wecomd" / "__init__.py").read_text()).group(1)

setup(
    name="wecomd",
    version=VERSION,
    description="Self-hosted daemon for WeCom (企业微信) self-built app callbacks",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.9",
    packages=find_packages(include=["wecomd", "wecomd.*"]) + ["wecomd.templates", "wecomd.static"],
    package_dir={"wecomd.templates": "templates", "wecomd.static": "static"},
    package_data={
        "wecomd": ["translations/*.csv"],
        "wecomd.templates": ["*.html", "**/*.html"],
        "wecomd.static": ["*", "**/*"],
    },
    install_requires=[
        "tornado>=6.3",
        "peewee>=4.5.3",  # playhouse.migrations runner
        "pycryptodome>=3.18",
        "defusedxml>=0.7.1",
        "prometheus_client>=0.17",  # GET /metrics
    ],
    extras_require={
        # bench/profile_callback.py samples the daemon under load (bench/load.py also needs wrk and wechatpy)
        "bench": ["py-spy>=0.3.14", "wechatpy>=1.8.18"],
        "fuzz": ["atheris>=2.3"],
        "postgres": ["psycopg2-binary>=2.9"],  # [server] database = postgresql://...
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "pytest-xdist>=3.5",  # the suite runs on two workers (setup.cfg addopts)
            "wechatpy>=1.8.18",  # independent crypto implementation for interop tests
            "hypothesis>=6.100",  # property tests (tests/test_properties.py)
            "playwright>=1.40",  # browser tests drive Debian's /usr/bin/chromium; never its own download
            "psycopg2-binary>=2.9",  # the store tests' PostgreSQL variants (TEST_POSTGRES_URL)
            "ruff>=0.4",  # tests/test_lint.py: `ruff check .` (configured in pyproject.toml)
        ],
    },
    entry_points={"console_scripts": ["wecomd=wecomd.cli:main"]},
    cmdclass={"build_py": BuildPy},
    classifiers=[
        "Framework :: Tornado",
        "Programming Language :: Python :: 3",
        "Environment :: No Input/Output (Daemon)",
    ],
)
