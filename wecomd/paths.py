"""Where the templates and static files are: beside the package when installed, else the repo root."""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
TRANSLATIONS_DIR = _PACKAGE / "translations"


def resource_dir(name: str) -> Path:
    """Return the directory of `templates` or `static` for this install."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("wecomd resource directory %r not found" % name)


def sample_config() -> Path:
    """The commented sample wecomd.conf: packaged beside the modules, or at the repo root."""
    for candidate in (_PACKAGE / "wecomd.conf", _PACKAGE.parent / "wecomd.conf"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("the sample wecomd.conf is not installed")
