"""The documentation cannot go stale: every command shown in README.md and docs/*.md is extracted
and checked against the code, without running it and without importing TensorFlow.

- A shell command (a fenced block's line, or an inline code span, starting with ``python``,
  ``.venv/bin/python``, ``python -m deepcovidxr``, ``deepcovidxr``, ``./run`` or ``docker run``;
  ``\\`` continuations joined, ``# comments`` dropped) must name a stage (``deepcovidxr STAGE``),
  a root stage script or a benchmark that exists, and every flag must parse with that stage's
  generated parser (a benchmark's flags must be among its ``add_argument`` calls); ``./run`` must
  know the subcommand; pytest paths must exist.
- A YAML block is a config file: every section must be a stage and every key and value must pass
  that stage's schema.
- A Python block must compile, and what it imports from ``deepcovidxr`` must exist (with the
  call signatures the block uses, for ``Predictor``).
- docs/stages.md documents every flag of every stage; README.md names every stage and alias.
- Relative links and their anchors resolve; no internal tracker number appears.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import re
import shlex
import sys
import typing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deepcovidxr import stages
from deepcovidxr.config.schema import build_parser, coerce, section_values

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "deepcovidxr"
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]  # user documentation: commands are checked here
ALL_PAGES = [*PAGES, REPO / "ARCHITECTURE.md"]  # links and tracker numbers are checked here too

PREFIXES = ("python ", ".venv/bin/python ", "./run ", "deepcovidxr ", "docker run ")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
# Inline spans that show a form rather than a command: `deepcovidxr STAGE [flags]`, `./run python SCRIPT`.
PLACEHOLDER = re.compile(r"\bSTAGE\b|\bSCRIPT\b|\[flags\]|\.\.\.")
# Internal tracker references users cannot follow: "issue 12", "(issue 2)", "stop 19", "defect 8".
TRACKER = re.compile(r"\bissue \d+|\(issue\b|\bstop \d+|\bdefect \d+", re.IGNORECASE)
FENCE = re.compile(r"^\s*```(\S*)\s*$")
SHELL_OPERATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the block's first content line
    language: str
    text: str


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if not opened:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            end += 1
        found.append(Block(page, index + 2, opened.group(1).lower(), "\n".join(lines[index + 1 : end])))
        index = end + 1
    return found


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced blocks, numbered."""
    kept, inside = [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            kept.append((number, line))
    return kept


def block_commands(block: Block) -> Iterator[Command]:
    """Logical lines (``\\`` continuations joined) of a shell block that start with a known prefix."""
    current, start = "", block.line
    for number, raw in enumerate(block.text.splitlines(), start=block.line):
        line = raw.strip()
        if not current:
            start = number
        current = f"{current} {line}".strip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.startswith("$ "):
            current = current[2:]
        if current.startswith(PREFIXES):
            yield Command(block.page, start, current)
        current = ""


def inline_commands(page: Path) -> Iterator[Command]:
    for number, line in prose(page):
        for span in re.findall(r"`([^`\n]+)`", line):
            if span.startswith(PREFIXES) and not PLACEHOLDER.search(span):
                yield Command(page, number, span)


def all_commands() -> list[Command]:
    found: list[Command] = []
    for page in PAGES:
        for block in blocks(page):
            if block.language in SHELL_LANGUAGES:
                found.extend(block_commands(block))
        found.extend(inline_commands(page))
    return found


def tokens_of(command: Command) -> list[str]:
    try:
        return shlex.split(command.text, comments=True)
    except ValueError:
        # a line inside a quoted `bash -c '...'` (the Slurm example) ends with the closing quote
        return shlex.split(command.text.rstrip("'\""), comments=True)


def segments(tokens: list[str]) -> Iterator[list[str]]:
    """The simple commands of a pipeline or list (``a && b``)."""
    current: list[str] = []
    for token in tokens:
        if token in SHELL_OPERATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


# ---- checking one command ----------------------------------------------------------------------


def run_subcommands() -> set[str]:
    text = (REPO / "run").read_text(encoding="utf-8")
    case = text[text.index("case ") :]
    return {m for m in re.findall(r"^\s+([a-z]+)\)", case, re.M)}


def docker_entrypoint() -> list[str]:
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("ENTRYPOINT"):
            return json.loads(line.removeprefix("ENTRYPOINT").strip())
    return []


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def option_fields(cls: type) -> list[tuple[dataclasses.Field, typing.Any]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def check_stage_flags(stem: str, args: list[str]) -> None:
    """Every flag parses with the stage's generated parser (nothing unknown, values of the right
    type and choice), no flag is an abbreviation, and the required ones are given unless a
    ``--config`` file supplies them."""
    cls = stages.get(stem).config_class
    parser = build_parser(cls, prog=stem)
    args = [a for a in args if a not in {"-h", "--help"}]
    known = option_strings(parser)
    for token in args:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in known, f"{stem} has no flag {flag}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace, unknown = parser.parse_known_args(args)
    except SystemExit:
        raise AssertionError(f"{stem} refuses {args}: {stderr.getvalue().strip()}") from None
    assert not unknown, f"{stem} does not know {unknown}"
    if "--config" in args or not args:  # a bare `deepcovidxr STAGE` shows only the form
        return
    given = vars(namespace)
    missing = [spec.long for f, spec in option_fields(cls) if spec.required and f.name not in given]
    assert not missing, f"{stem} needs {missing}"


def benchmark_flags(path: Path) -> set[str]:
    flags: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags.update(a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-"))
    return flags | {"-h", "--help"}


def check_script(script: str, args: list[str]) -> None:
    path = REPO / script
    assert path.is_file(), f"no script {script}"
    if path.parent == REPO and path.stem in stages.STAGES:
        check_stage_flags(path.stem, args)
    elif path.parent == REPO / "benchmarks":
        known = benchmark_flags(path)
        unknown = [a.split("=", 1)[0] for a in args if a.startswith("-") and a.split("=", 1)[0] not in known]
        assert not unknown, f"{script} has no flag {unknown}"
    else:
        raise AssertionError(f"{script} is neither a stage script nor a benchmark")


def check_pytest(args: list[str]) -> None:
    takes_value = {"-n", "-m", "-k", "-p", "-c", "--dist", "--durations", "--maxfail"}
    skip = False
    for token in args:
        if skip:
            skip = False
        elif token in takes_value:
            skip = True
        elif not token.startswith("-"):
            assert (REPO / token.split("::")[0]).exists(), f"pytest path {token} does not exist"


def check_stage_command(args: list[str]) -> None:
    """``deepcovidxr STAGE [flags]`` (and ``python -m deepcovidxr``)."""
    if not args or args[0] in {"-h", "--help"}:
        return
    assert args[0] in stages.names(), f"no stage {args[0]!r}; stages: {sorted(stages.names())}"
    check_stage_flags(stages.names()[args[0]], args[1:])


def check_tokens(tokens: list[str]) -> None:
    head, *rest = tokens
    if head == ".venv/bin/python":
        head = "python"
    if head == "docker":
        assert rest[0] == "run"
        image = rest.index("deepcovidxr")  # the tag `docker build -t deepcovidxr .` gives
        check_tokens([*docker_entrypoint(), *rest[image + 1 :]])
    elif head == "./run":
        assert rest and rest[0] in run_subcommands(), f"./run has no subcommand {rest[:1]}"
        sub, args = rest[0], rest[1:]
        if sub == "demo":
            check_stage_flags("demo", args)
        elif sub == "python":
            check_tokens(["python", *args])
        elif sub == "test":
            check_pytest(args)
    elif head == "deepcovidxr":
        check_stage_command(rest)
    elif head == "python":
        if rest[:2] == ["-m", "deepcovidxr"]:
            check_stage_command(rest[2:])
        elif rest[:2] == ["-m", "pytest"]:
            check_pytest(rest[2:])
        else:
            assert rest and not rest[0].startswith("-"), f"python {rest[:2]}: not a script the docs may show"
            check_script(rest[0], rest[1:])
    else:
        raise AssertionError(f"unexpected command {head}")


COMMANDS = all_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40
    assert {c.page for c in COMMANDS} >= {README, REPO / "docs" / "stages.md"}


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_a_documented_command_matches_the_code(command: Command) -> None:
    for simple in segments(tokens_of(command)):
        if simple[0].startswith(("python", ".venv/bin/python", "./run", "deepcovidxr", "docker")):
            try:
                check_tokens(simple)
            except AssertionError as error:
                raise AssertionError(f"{command}\n  {error}") from None


def test_the_readme_starts_with_the_two_commands() -> None:
    first = blocks(README)[0]
    lines = [c.text.split("#")[0].strip() for c in block_commands(first)]
    assert lines == ["./run demo", "./run test"], lines
    assert "demo_output/index.html" in first.text


def test_the_checker_refuses_what_does_not_exist() -> None:
    for wrong in (
        ["deepcovidxr", "crop_img", "-f", "raw/", "-o", "out/", "--no-such-flag"],
        ["deepcovidxr", "no_such_stage"],
        ["python", "no_such_script.py"],
        ["deepcovidxr", "resize_img", "-i", "a/", "-o", "b/"],  # -s is required
        ["deepcovidxr", "ensemble", "-w", "m/", "-d", "d/", "--method", "median"],
        ["deepcovidxr", "predict", "-w", "m/", "-i", "x/", "-o", "y/", "--engin", "keras"],  # no abbreviations
        ["./run", "deploy"],
        ["python", "benchmarks/bench_predict.py", "--no-such-flag"],
    ):
        with pytest.raises(AssertionError):
            check_tokens(wrong)
    check_tokens(["deepcovidxr", "crop", "-f", "raw/", "-o", "out/"])


# ---- config files ------------------------------------------------------------------------------


def yaml_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.language in {"yaml", "yml"}]


@pytest.mark.parametrize("block", yaml_blocks(), ids=lambda b: f"{b.page.name}:{b.line}")
def test_a_documented_config_file_passes_the_schema(block: Block) -> None:
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict) and data
    for stem, section in data.items():
        cls = stages.get(stem).config_class
        values = section_values(cls, data, stem, stages.STAGES, block.page)
        hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        specs = dict((f.name, spec) for f, spec in option_fields(cls))
        for name, value in values.items():
            value = coerce(value, hints[name], specs[name])
            choices = specs[name].choices
            assert choices is None or value in choices, f"{stem}.{name}: {value!r} not in {choices}"
        assert len(values) == len(section)


# ---- Python ------------------------------------------------------------------------------------


def python_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.language in {"python", "py"}]


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def predictor_pending() -> bool:
    """True while no module of the package defines the Predictor yet (it is being written): the
    docs may show it until then; from the moment it exists they must agree with it."""
    import deepcovidxr

    if hasattr(deepcovidxr, "Predictor"):
        return False
    return not any("class Predictor" in p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))


def check_signature(function: typing.Any, call: ast.Call, what: str, bound: bool = False) -> None:
    import inspect

    args = [None] * (len(call.args) + bound)
    kwargs = {k.arg: None for k in call.keywords if k.arg}
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as error:
        raise AssertionError(f"{what}({ast.unparse(call)[len(what) :]}): {error}") from None


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"{b.page.name}:{b.line}")
def test_a_documented_python_block_compiles_and_its_names_exist(block: Block) -> None:
    import deepcovidxr

    tree = ast.parse(block.text)
    compile(tree, str(block.page), "exec")
    imported: dict[str, typing.Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "deepcovidxr":
            for alias in node.names:
                if node.module == "deepcovidxr":
                    if alias.name == "Predictor" and predictor_pending():
                        continue
                    assert hasattr(deepcovidxr, alias.name), f"deepcovidxr has no {alias.name}"
                    imported[alias.asname or alias.name] = getattr(deepcovidxr, alias.name)
                else:
                    path = module_file(node.module)
                    assert path is not None, f"no module {node.module}"
                    assert alias.name in top_level_names(path) or module_file(f"{node.module}.{alias.name}"), (
                        f"{node.module} has no {alias.name}"
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "deepcovidxr":
                    assert module_file(alias.name), f"no module {alias.name}"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "deepcovidxr":
            assert hasattr(deepcovidxr, node.attr), f"deepcovidxr has no {node.attr}"
    # Calls: the Predictor's constructor and methods take what the block passes; dispatch's
    # argument list is a stage command like any other.
    instances: dict[str, typing.Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Name) and isinstance(imported.get(func.id), type):
                instances.update({t.id: imported[func.id] for t in node.targets if isinstance(t, ast.Name)})
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "Predictor" and func.id in imported:
            check_signature(imported["Predictor"], node, "Predictor")
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in instances:
            cls = instances[func.value.id]
            assert hasattr(cls, func.attr), f"{cls.__name__} has no method {func.attr}"
            check_signature(getattr(cls, func.attr), node, f"{func.value.id}.{func.attr}", bound=True)
        elif isinstance(func, ast.Name) and func.id == "dispatch" and node.args and isinstance(node.args[0], ast.List):
            check_stage_command([ast.literal_eval(e) for e in node.args[0].elts])


def test_prose_names_only_methods_the_predictor_has() -> None:
    if predictor_pending():
        pytest.skip("deepcovidxr.Predictor is not written yet")
    import deepcovidxr

    for page in PAGES:
        for number, line in prose(page):
            for method in re.findall(r"`p\.(\w+)\(", line):
                assert hasattr(deepcovidxr.Predictor, method), f"{page.name}:{number}: Predictor has no {method}"


# ---- the stage reference -------------------------------------------------------------------------


def stage_sections() -> dict[str, str]:
    """docs/stages.md's sections whose heading starts with a stage's name in backticks."""
    text = (REPO / "docs" / "stages.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        named = re.match(r"`(\w+)`", part)
        if named:
            sections[named.group(1)] = part
    return sections


@pytest.mark.parametrize("stem", sorted(stages.STAGES))
def test_the_stage_reference_documents_every_flag(stem: str) -> None:
    sections = stage_sections()
    assert stem in sections, f"docs/stages.md has no section for {stem}"
    text = sections[stem]
    missing = [
        spec.long
        for _, spec in option_fields(stages.get(stem).config_class)
        if not any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) for flag in spec.flags)
    ]
    assert not missing, f"docs/stages.md, section {stem}: undocumented flags {missing}"


def test_the_readme_names_every_stage_and_alias() -> None:
    text = README.read_text(encoding="utf-8")
    for name in stages.names():
        assert f"`{name}`" in text, f"README.md does not name the stage {name}"


# ---- paths ---------------------------------------------------------------------------------------


REPO_PATH = re.compile(r"`((?:deepcovidxr|tests|tools|benchmarks|docs)/[\w./-]*?)(?::\s*\w+)?`")


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: p.name)
def test_repository_paths_named_in_prose_exist(page: Path) -> None:
    """`deepcovidxr/lungs/unet.py`, `tests/integration/...`, `benchmarks/...` named in the text."""
    missing = [
        f"{number}: {path}"
        for number, line in prose(page)
        for path in REPO_PATH.findall(line)
        if not (REPO / path.rstrip("/")).exists()
    ]
    assert not missing, f"{page.name} names paths that do not exist: " + "; ".join(missing)


# ---- ARCHITECTURE.md --------------------------------------------------------------------------------


def architecture_sections() -> dict[str, str]:
    """ARCHITECTURE.md's module tables: ``contract/`` ... and ``""`` for the top-level modules."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        named = re.match(r"`(\w+)/`", part)
        if named:
            sections[named.group(1)] = part
        elif part.startswith("Top-level modules"):
            sections[""] = part
    return sections


def test_architecture_has_a_row_for_every_module_and_none_for_a_module_gone() -> None:
    sections = architecture_sections()
    problems = []
    for sub in sorted({p.parent.name for p in PACKAGE.glob("*/*.py")} | {""}):
        folder = PACKAGE / sub if sub else PACKAGE
        if not (folder / "__init__.py").is_file():
            continue
        text = sections.get(sub)
        if text is None:
            problems.append(f"no section for {sub}/")
            continue
        rows = set(re.findall(r"^\| `(\w+\.py)` \|", text, re.M))
        modules = {p.name for p in folder.glob("*.py") if sub == "" or p.name != "__init__.py" or sub == "stages"}
        problems += [f"{sub}/{m}: no row" for m in sorted(modules - rows)]
        problems += [f"{sub}/{m}: row for a module that does not exist" for m in sorted(rows - modules)]
    assert not problems, "ARCHITECTURE.md: " + "; ".join(problems)


def test_architecture_draws_the_layers_in_the_tested_order() -> None:
    from tests.test_architecture import LAYERS

    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    drawn = {int(n): names for n, names in re.findall(r"^\s*(\d+)  (\S.*?)\s{2,}", text, re.M)}
    expected = [", ".join(m.removeprefix("deepcovidxr.") for m in layer) for layer in LAYERS]
    assert [drawn.get(i) for i in range(len(LAYERS))] == expected


# ---- links and tracker numbers --------------------------------------------------------------------


def slugs(page: Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for _, line in prose(page):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for number, line in prose(page):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in slugs(linked):
                broken.append(f"{number}: {target} (no such heading)")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: p.name)
def test_no_internal_tracker_numbers(page: Path) -> None:
    found = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if TRACKER.search(line)
    ]
    assert not found, f"{page.name} mentions internal tracker numbers: " + "; ".join(found)


def test_the_tracker_pattern_sees_the_forms_used_before() -> None:
    for text in ("done (issue 2)", "see issue 12", "the stop 19 review", "defect 8"):
        assert TRACKER.search(text), text
    for text in ("keras-team/keras#20585", "the issue's target", "early stopping 5 then 10"):
        assert not TRACKER.search(text), text
