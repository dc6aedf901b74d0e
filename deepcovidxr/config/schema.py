"""One typed config schema for every stage: flags, help, type, default and validation declared once
per field; the parser, the config-file reader and the per-run dump (:mod:`deepcovidxr.config.run_record`)
are generated from it. The checks a field may declare are :mod:`deepcovidxr.config.checks`'.

A stage's config is a frozen, keyword-only dataclass deriving from :class:`StageConfig` whose
fields are declared with :func:`option`::

    @dataclass(frozen=True, kw_only=True)
    class CropConfig(StageConfig):
        input: Path = option("-f", "--folder", help="...", required=True, check=exists)

Precedence: dataclass defaults < ``--config FILE`` section < hyperparameters file (stages that
declare ``HYPERPARAMETER_KEYS``) < explicit flags. A config file (YAML or JSON) holds one section
per script stem (``predict:``, ``train:``, ...); its keys are the long flag names without dashes
(``-`` and ``_`` both accepted) or the field names. ``run_config.json``, written by every run, has
the same shape, so it can be handed back as ``--config`` to repeat a run.

This module imports neither TensorFlow nor numpy: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from deepcovidxr.errors import MissingInputError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """What a field declares besides its type: how it is spelled and checked."""

    flags: tuple[str, ...]
    help: str
    required: bool = False
    parse: Callable[[str], Any] | None = None  # text -> value, for types a plain cast cannot make
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    metavar: str | tuple[str, ...] | None = None
    show_default: bool = True
    const: Any = None  # the value of the bare flag (its value is then optional)

    @property
    def long(self) -> str:
        """The first long spelling: what messages and config-file keys use."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])


def option(
    *flags: str,
    help: str,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    required: bool = False,
    parse: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    show_default: bool = True,
    const: Any = None,
) -> Any:
    """A dataclass field that is also a command-line flag and a config-file key. A required field
    gets the default ``None`` (so configs stay keyword-only dataclasses with any field order) and
    is enforced when the config is built."""
    spec = Option(
        flags=tuple(flags),
        help=help,
        required=required,
        parse=parse,
        choices=tuple(choices) if choices is not None else None,
        check=check,
        metavar=metavar,
        show_default=show_default,
        const=const,
    )
    if required and default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
        default = None
    return field(default=default, default_factory=default_factory, metadata={"option": spec})


class StageConfig:
    """Base of every stage config: coerces values to the declared types (a config file or a
    library caller may give ``str`` for ``Path``, lists for tuples) and runs each field's check,
    so a bad value is one :class:`UsageError` naming its flag, whoever built the config."""

    # Stages that read a hyperparameters file name the fields it supplies: field -> file key.
    HYPERPARAMETER_KEYS: ClassVar[dict[str, str]] = {}
    # The fields naming the run's output folder and its input (for run_config.json).
    OUTPUT_FIELD: ClassVar[str | None] = "output"
    INPUT_FIELD: ClassVar[str | None] = None
    # Output fields that must lie outside the input (nothing is ever written into an input folder).
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            spec = f.metadata.get("option")
            if spec is None:
                continue
            value = getattr(self, f.name)
            if value is None:
                if spec.required:
                    raise UsageError(f"{_spelling(spec)} is required")
                continue
            value = coerce(value, hints[f.name], spec)
            object.__setattr__(self, f.name, value)
            if spec.choices is not None and value not in spec.choices:
                choices = ", ".join(str(c) for c in spec.choices)
                raise UsageError(f"{_spelling(spec)}: {value!r} is not one of {choices}")
            complaint = spec.check(value) if spec.check else None
            if complaint:
                raise UsageError(f"{_spelling(spec)}: {complaint}")
        source = getattr(self, self.INPUT_FIELD) if self.INPUT_FIELD else None
        if source is not None and self.OUTSIDE_INPUT:
            ensure_outside(source, *(getattr(self, name) for name in self.OUTSIDE_INPUT))

    def options(self) -> dict[str, Any]:
        """The resolved options as JSON-ready values, keyed by field name."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def ensure_outside(source: Path, *targets: Path | None) -> None:
    """Refuse to write anywhere inside the input tree (or onto the input file)."""
    source = Path(source).resolve()
    root = source if source.is_dir() else source.parent
    for target in targets:
        if target is None:
            continue
        resolved = Path(target).resolve()
        if resolved == root or root in resolved.parents:
            raise UsageError(f"output {target} lies inside the input {root}; choose a folder outside it")


def _spelling(spec: Option) -> str:
    return "/".join(spec.flags)


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, vars(module))


# ---- types ---------------------------------------------------------------------------------------


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); a union of several non-None types stays as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007
    return hint, False


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # e.g. bool | str: first that fits
        for candidate in typing.get_args(hint):
            if isinstance(value, candidate):
                return value
        return _scalar(value, typing.get_args(hint)[-1], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise UsageError(f"{where}: expected {hint.__name__}, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    if hint is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise UsageError(f"{where}: expected a path, got {value!r}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            names = ", ".join(str(m.value) for m in hint)
            raise UsageError(f"{where}: {value!r} is not one of {names}") from None
    if hint is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected text, got {value!r}")
    return value


def coerce(value: Any, hint: Any, spec: Option) -> Any:
    """``value`` (from a flag, a config file or a caller) as the field's declared type."""
    where = _spelling(spec)
    if spec.parse is not None and isinstance(value, str):
        try:
            return spec.parse(value)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise UsageError(f"{where}: {error}") from None
    hint, _ = _split_optional(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        items = [value] if isinstance(value, str | os.PathLike | int | float) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_scalar(v, args[0], where) for v in items)
        if len(items) != len(args):
            raise UsageError(f"{where}: expected {len(args)} values, got {len(items)}")
        return tuple(_scalar(v, a, where) for v, a in zip(items, args, strict=True))
    return _scalar(value, hint, where)


def jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


# ---- parser ----------------------------------------------------------------------------------------


def _option_fields(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _describe_default(value: Any) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(jsonable(v)) for v in value) or "none"
    return str(jsonable(value))


def _cast(hint: Any, spec: Option) -> Callable[[str], Any]:
    """The argparse ``type`` of one value: the field's own coercion, as an argparse error."""

    def cast(text: str) -> Any:
        try:
            return coerce(text, hint, spec)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 1)[-1]) from None

    cast.__name__ = getattr(hint, "__name__", "value")
    return cast


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The stage's parser, generated from its fields; every default is SUPPRESSed so that only
    flags given explicitly reach :func:`resolve` (they are the top layer of the precedence)."""
    from deepcovidxr import DISCLAIMER

    parser = argparse.ArgumentParser(
        prog=prog,
        description=inspect.cleandoc(description or cls.__doc__ or ""),
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    hints = _hints(cls)
    for f, spec in _option_fields(cls):
        hint, _ = _split_optional(hints[f.name])
        default = _default_of(f)
        text = spec.help
        if spec.required:
            text += " (required)"
        elif spec.show_default and "default" not in text and isinstance(default, bool):
            # a switch is off unless given, whichever way it flips the field (--no-cache too)
            text += " (default: off)"
        elif spec.show_default and "default" not in text:
            text += f" (default: {_describe_default(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": text}
        if hint is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            if typing.get_origin(hint) is tuple and spec.parse is None:
                args = typing.get_args(hint)
                variadic = len(args) == 2 and args[1] is Ellipsis
                kwargs["nargs"] = "+" if variadic else len(args)
                kwargs["type"] = _cast(args[0], spec)
            else:
                kwargs["type"] = _cast(hints[f.name], spec)
            if spec.const is not None:
                kwargs.update(nargs="?", const=spec.const)
            if spec.choices is not None:
                kwargs["choices"] = spec.choices
            if spec.metavar is not None:
                kwargs["metavar"] = spec.metavar
            elif spec.choices is None:  # name the value after the flag, not the field
                kwargs["metavar"] = _key(spec.long).upper()
        parser.add_argument(*spec.flags, **kwargs)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML or JSON file with a section per script (keys: the long flag names); explicit flags win",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output; -v shows tracebacks")
    return parser


# ---- config files ----------------------------------------------------------------------------------


def read_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON config file as a mapping (JSON by the ``.json`` suffix, else YAML, which
    also reads JSON)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:
        raise UsageError(f"{path}: not a readable YAML/JSON file ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _key(text: str) -> str:
    return text.strip().lstrip("-").replace("-", "_")


def section_values(cls: type, data: dict[str, Any], stem: str, known_sections: Iterable[str], path: Path) -> dict:
    """This stage's section of a config file, its keys mapped to field names. Unknown sections
    and unknown keys are errors naming them (a typo must not be silently ignored)."""
    known_sections = set(known_sections)
    for name in data:
        if not str(name).startswith("_") and name not in known_sections:
            raise UsageError(
                f"{path}: unknown section {name!r}; sections are named after the scripts: "
                + ", ".join(sorted(known_sections))
            )
    section = data.get(stem) or {}
    if not isinstance(section, dict):
        raise UsageError(f"{path}: section {stem!r} must be a mapping of options")
    names: dict[str, tuple[str, bool]] = {}  # key -> (field, negated)
    hints = _hints(cls)
    for f, spec in _option_fields(cls):
        names[_key(f.name)] = (f.name, False)
        for flag in spec.flags:
            if flag.startswith("--"):
                key = _key(flag)
                negated = _split_optional(hints[f.name])[0] is bool and key.startswith("no_") and bool(_default_of(f))
                names.setdefault(key, (f.name, negated))
    values: dict[str, Any] = {}
    for key, value in section.items():
        if _key(str(key)) not in names:
            raise UsageError(
                f"{path}: unknown key {key!r} in section {stem!r}; known keys: "
                + ", ".join(sorted({_key(s.long) for _, s in _option_fields(cls)}))
            )
        name, negated = names[_key(str(key))]
        values[name] = (not value) if negated and isinstance(value, bool) else value
    return values


def hyperparameter_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The layer a hyperparameters file adds (between the config file and the flags)."""
    source = values.get("hyperparameters")
    if not cls.HYPERPARAMETER_KEYS or source is None or Path(source).is_dir():
        return {}  # a folder is per member: train_all resolves it member by member
    from deepcovidxr.config import hyperparams

    found = hyperparams.read(Path(source))
    return {name: found[key] for name, key in cls.HYPERPARAMETER_KEYS.items() if key in found}


def resolve(
    cls: type, stem: str, argv: list[str] | None, known_sections: Iterable[str], description: str | None = None
) -> tuple[Any, int]:
    """Parse ``argv`` and build the stage's config by the precedence; returns (config, verbosity).
    Usage errors end the process with argparse's exit code 2 and one message."""
    parser = build_parser(cls, prog=f"{stem}.py", description=description)
    args = vars(parser.parse_args(argv))
    verbose = args.pop("verbose", 0)
    config_file = args.pop("config", None)
    try:
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(section_values(cls, read_file(config_file), stem, known_sections, config_file))
        values.update(hyperparameter_values(cls, {**values, **args}))
        values.update(args)
        return cls(**values), verbose
    except (UsageError, MissingInputError) as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
