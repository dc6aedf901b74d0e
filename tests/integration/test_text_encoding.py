"""Every text file the project opens says encoding="utf-8": CI ran under a plain-ASCII locale,
where Python's default text encoding is ASCII and the shared manifests' non-ASCII bytes failed
(tests/integration/test_three_class_recipe.py runs a stage under that locale). Ruff's PLW1514 sees only the
builtin ``open``; this also sees ``Path.open``, ``read_text`` and ``write_text``."""

from __future__ import annotations

import ast
import subprocess

from tests.support.helpers import REPO

TEXT_CALLS = {"open", "read_text", "write_text"}
# Modules whose ``open`` is not a text file: images, archives, HDF5.
NOT_TEXT = {"Image", "tarfile", "zipfile", "gzip", "h5py", "os", "webbrowser", "atomic"}


def unspecified(source: str) -> list[int]:
    """Lines of calls that open a text file without naming its encoding."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            # write_text(...) alone is deepcovidxr.contract.atomic's, which encodes UTF-8 itself.
            if func.id != "open":
                continue
            mode = node.args[1] if len(node.args) > 1 else None
        elif isinstance(func, ast.Attribute) and func.attr in TEXT_CALLS:
            if isinstance(func.value, ast.Name) and func.value.id in NOT_TEXT:
                continue
            mode = node.args[0] if func.attr == "open" and node.args else None
        else:
            continue
        mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
        if mode is not None and not (isinstance(mode, ast.Constant) and "b" not in mode.value):
            continue  # binary, or a mode chosen at run time (nih_download's "ab"/"wb")
        lines.append(node.lineno)
    return lines


def test_the_checker_sees_the_forms_that_failed() -> None:
    source = (
        'p.open(newline="")\nopen(f, "w")\np.read_text()\np.open("rb")\nImage.open(p)\np.read_text(encoding="utf-8")\n'
    )
    assert unspecified(source) == [1, 2, 3]


def test_every_text_file_is_opened_as_utf8() -> None:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    found = [
        f"{name}:{line}"
        for name in files.stdout.split()
        if (REPO / name).is_file()
        for line in unspecified((REPO / name).read_text(encoding="utf-8"))
    ]
    assert not found, "text opened without encoding='utf-8': " + ", ".join(found)
