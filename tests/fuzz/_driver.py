"""What every fuzz target here shares: atheris when installed, else one pass over a corpus."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

try:
    import atheris
except ImportError:  # replay mode works without it
    atheris = None


def by_first_byte(modes: list) -> Callable[[bytes], None]:
    """The target's TestOneInput (the name atheris expects): an input's first byte picks the mode
    ('a' = 0, 'b' = 1, ...), the rest is that mode's payload."""
    def test_one_input(data: bytes) -> None:
        if data:
            modes[(data[0] - ord("a")) % len(modes)](data[1:])
    return test_one_input


def replay(test_one_input: Callable[[bytes], None], paths: Iterable) -> int:
    """Feed every file under `paths` to the target once."""
    paths = list(paths)
    files = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    for file in files:
        test_one_input(file.read_bytes())
    print("replayed %d inputs from %s: no crash" % (len(files), ", ".join(map(str, paths))))
    return 0


def main(test_one_input: Callable[[bytes], None], target_file: str) -> int:
    """`python fuzz_X.py [libFuzzer options] [CORPUS...]`, or `--replay [DIR|FILE...]`."""
    args = [a for a in sys.argv[1:] if a != "--replay"]
    if atheris is None or "--replay" in sys.argv:
        default = Path(target_file).parent / "corpus" / Path(target_file).stem[5:]
        return replay(test_one_input, [a for a in args if not a.startswith("-")] or [default])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
    return 0
