"""The hidden-file rule every listing of inputs and trees follows: dot files and what operating
systems and archivers leave beside images are never inputs, so never listed or reported."""

from __future__ import annotations

from pathlib import Path

# Besides dot files such as ._x.png AppleDouble forks and .DS_Store.
OS_LITTER = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})


def is_hidden_name(name: str) -> bool:
    """A dot file or folder (``._x.png``, ``.DS_Store``, ``.ipynb_checkpoints``) or OS litter
    (``Thumbs.db``, ``desktop.ini``, ``__MACOSX``)."""
    return name.startswith(".") or name.lower() in OS_LITTER


def is_hidden(path: Path | str, root: Path | str | None = None) -> bool:
    """True when ``path``, or a folder between ``root`` and it, is hidden (:func:`is_hidden_name`).
    Folders above ``root`` do not count: a dataset may live under a hidden folder."""
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(is_hidden_name(part) for part in parts)
