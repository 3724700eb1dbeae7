"""The documentation says what the code does, and holds together.

docs/observability.md lists every log event and every metric, both ways; every relative
link in the README, CONTRIBUTING.md and docs/ leads somewhere; every setting in
config.example.json is in docs/configuration.md; the README stays short; the module map in
docs/architecture.md is the package's modules, and its diagram names every message."""

from __future__ import annotations

import ast
import json
import re
import typing
from pathlib import Path

import click
import msgspec
import pytest
from prometheus_client.metrics import MetricWrapperBase

from streamer import messages, metrics

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OBSERVABILITY = DOCS / "observability.md"
CONFIGURATION = DOCS / "configuration.md"
README_MAX_LINES = 250
LOG_METHODS = {"debug", "info", "warning", "error"}


def section(path: Path, title: str) -> str:
    """The `## title` section of a Markdown file, up to the next `## ` heading."""
    text = path.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def logged_events() -> set[str]:
    """Event names the package logs: literals passed to `log.<level>(...)`, literals
    passed to a function that hands its `event` parameter on to one, literals assigned
    to a local `event`, and the values of a `*_EVENTS` mapping."""
    events: set[str] = set()
    trees = [ast.parse(path.read_text()) for path in (ROOT / "streamer").rglob("*.py")]
    forwarders = {}  # function name -> position of its `event` parameter, in any module
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                names = [a.arg for a in node.args.args]
                if "event" in names:
                    forwarders[node.name] = names.index("event") - (names[0] == "self")
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                getattr(target, "id", "") == "event" for target in node.targets
            ):
                events.update(
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Dict)
                and any(getattr(t, "id", "").endswith("_EVENTS") for t in node.targets)
            ):
                events.update(
                    v.value
                    for v in node.value.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)
                )
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr in LOG_METHODS and _is_log(node.func.value):
                position = 0
            elif node.func.attr in forwarders:
                position = forwarders[node.func.attr]
            else:
                continue
            if len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    events.add(argument.value)
    return events


def _is_log(receiver: ast.expr) -> bool:
    name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
    return name == "log"


def test_the_event_finder_sees_direct_and_forwarded_events():
    found = logged_events()
    assert {"chunk_uploaded", "stream_finished", "started"} <= found
    assert {"part_copy_failed", "assembly_begin_failed"} <= found  # through copy_failed()
    assert {"s3_unreachable", "s3_rejected", "upload_retry"} <= found  # a `*_EVENTS` map


def test_every_logged_event_is_in_the_docs_and_every_listed_one_is_logged():
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", section(OBSERVABILITY, "Logs")))
    logged = logged_events()
    assert sorted(logged - listed) == [], "logged but not in the Logs list of docs/observability.md"
    # Fields and values the section names beside the events.
    fields = {"ts", "level", "event", "role", "pid", "stream_id", "supervisor", "uploaded"}
    missing = sorted(listed - logged - fields)
    assert missing == [], "in the Logs list of docs/observability.md but never logged"


def test_the_metrics_table_in_the_docs_is_the_code_s_metrics():
    table = re.findall(
        r"^\| `(streamer_[a-z0-9_]+)(?:\{([a-z_,]+)\})?` \| (\w+) \|",
        section(OBSERVABILITY, "Metrics and health"),
        re.M,
    )
    documented = {
        name: (kind, tuple(labels.split(",")) if labels else ()) for name, labels, kind in table
    }
    defined = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            defined[name] = (value._type, tuple(value._labelnames))
        elif isinstance(value, metrics.FeatureGauge):
            defined[value.name] = ("gauge", ())
    assert documented == defined


# Links: every relative link in the project's Markdown leads to a file, and an anchor into
# a Markdown file (this one, for a bare `#anchor`) to one of its headings.

DOC_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:https?://|mailto:)", re.I)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")


def outside_code_blocks(text: str) -> list[str]:
    """The lines of a Markdown text that are not in a fenced code block."""
    lines, fence = [], ""
    for line in text.splitlines():
        marker = re.match(r"^\s*(`{3,}|~{3,})", line)
        if not fence and marker:
            fence = marker.group(1)
        elif fence and line.lstrip().startswith(fence):
            fence = ""
        elif not fence:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Link targets, `[text](target)`, in prose: not in code blocks or inline code."""
    prose = [re.sub(r"`[^`]*`", "", line) for line in outside_code_blocks(text)]
    return [m.group(1) for line in prose for m in LINK.finditer(line)]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation
    dropped, spaces made hyphens, `-1`, `-2`... after a repeated one."""
    seen: dict[str, int] = {}
    for line in outside_code_blocks(text):
        heading = HEADING.match(line)
        if heading:
            words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
            slug = re.sub(r"[^\w\- ]", "", words.lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path.read_text()):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")  # `#anchor` alone: this file
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {shown(resolved)}")
    return broken


def test_the_link_checker_finds_links_anchors_and_breakage(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Exit status of `streamer run`\n\n## Metrics, and health\n\n## Notes\n\n## Notes\n\n"
        "See [here](page.md#exit-status-of-streamer-run), [there](#metrics-and-health),\n"
        "[again](page.md#notes-1), [web](https://example.com/x.md) and [gone](missing.md).\n"
        "[lost](page.md#nowhere) `[code](not-a-link.md)`\n\n"
        "```sh\n# not a heading\n[nor](a-link.md)\n```\n"
    )
    assert anchors(page.read_text()) == {
        "exit-status-of-streamer-run",
        "metrics-and-health",
        "notes",
        "notes-1",
    }
    assert len(links(page.read_text())) == 6
    assert broken_links(page) == [
        "missing.md: no such file",
        "page.md#nowhere: no heading #nowhere in page.md",
    ]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(path):
    assert path.exists()
    assert broken_links(path) == []


def test_the_readme_links_every_document():
    targets = {target.partition("#")[0] for target in links((ROOT / "README.md").read_text())}
    wanted = {str(p.relative_to(ROOT)) for p in DOC_FILES if p.name != "README.md"}
    assert sorted(wanted - targets) == []


# Settings: config.example.json's every key is documented.


def example_settings() -> list[tuple[str, str]]:
    """(`section.key`, its STREAMER_ variable) for every setting in config.example.json."""
    data = json.loads((ROOT / "config.example.json").read_text())
    settings = []
    for name, value in data.items():
        keys = [f"{name}.{key}" for key in value] if isinstance(value, dict) else [name]
        settings += [(key, "STREAMER_" + key.replace(".", "_").upper()) for key in keys]
    return settings


def test_every_setting_in_the_example_config_is_in_the_configuration_docs():
    text = CONFIGURATION.read_text()
    settings = example_settings()
    assert ("s3.secret_key", "STREAMER_S3_SECRET_KEY") in settings
    assert ("workers.stall_timeout", "STREAMER_WORKERS_STALL_TIMEOUT") in settings
    missing = [
        name
        for name, variable in settings
        if f"`{name}`" not in text and not re.search(rf"\b{variable}\b", text)
    ]
    assert missing == [], "in config.example.json, not in docs/configuration.md"


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines < README_MAX_LINES, "move the detail into docs/"


# Commands: every `streamer ...` line in a shell block names a command there is, with its
# options, and every `make X` a target of the Makefile.

SHELL_BLOCKS = ("sh", "shell", "bash", "console", "crontab")
# `streamer` at the start of a shell command (after any VAR=value), or as an installed path.
INVOCATION = re.compile(r"(?:(?:^|&&|;)\s*(?:[A-Z_]+=\S*\s+)*|\S/bin/)streamer\s+(.*)")
END_OF_COMMAND = re.compile(r"\s(?:#|&&|\|\||;|\d?>)")
OPTION = re.compile(r"^--?[A-Za-z]")  # `-` alone is a value (stdout)
MAKE = re.compile(r"\bmake ([a-z][a-z0-9_-]*)")
MAKE_TARGET = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", re.M)


def code_blocks(text: str, languages: tuple[str, ...] | None = None) -> list[str]:
    """The lines of a Markdown text's fenced code blocks (of these languages)."""
    lines, fence, keep = [], "", False
    for line in text.splitlines():
        marker = re.match(r"^\s*(`{3,}|~{3,})\s*(\S*)", line)
        if not fence and marker:
            fence, keep = marker.group(1), languages is None or marker.group(2) in languages
        elif fence and line.lstrip().startswith(fence):
            fence = ""
        elif fence and keep:
            lines.append(line)
    return lines


def streamer_commands(text: str) -> list[str]:
    """The arguments of every `streamer` command in the shell blocks, comments left off."""
    found = []
    for line in code_blocks(text, SHELL_BLOCKS):
        if invocation := INVOCATION.search(line):
            found.append(END_OF_COMMAND.split(f" {invocation.group(1)}")[0].strip())
    return found


def command_problems(arguments: str) -> list[str]:
    """What in `streamer <arguments>`, as the documentation writes it, the command tree
    (`streamer.cli.main`) does not know: a command, an option, a choice, an argument too
    many. As in usage lines, [...] is optional, a lone | separates alternatives, and
    A|B|C is one of several values; upper-case words are placeholders."""
    from streamer.cli import HELP_OPTIONS, main

    command, path, positional = main, ["streamer"], 0
    words = [w for w in re.split(r"[\s\[\]]+", arguments) if w and w != "|"]
    while words:
        word = words.pop(0)
        where = " ".join(path)
        if isinstance(command, click.Group) and not OPTION.match(word):
            if word not in command.commands:
                return [f"{where} has no command {word!r}"]
            command, path = command.commands[word], [*path, word]
        elif not OPTION.match(word):
            positional += 1
        elif (name := word.partition("=")[0]) not in HELP_OPTIONS:
            options = {o: p for p in command.params if isinstance(p, click.Option) for o in p.opts}
            if name not in options:
                return [f"{where} has no option {name}"]
            value = word.partition("=")[2]
            takes = not (options[name].is_flag or options[name].count)
            if takes and not value and words and not OPTION.match(words[0]):
                value = words.pop(0)
            choices = getattr(options[name].type, "choices", None) or ()
            wrong = [
                v for v in value.split("|") if choices and not v.isupper() and v not in choices
            ]
            if value and wrong:
                return [f"{where} {name}: no choice {', '.join(wrong)}"]
    taken = [p.nargs for p in command.params if isinstance(p, click.Argument)]
    if -1 not in taken and positional > sum(taken):
        return [f"{' '.join(path)} takes {sum(taken)} argument(s), not {positional}"]
    return []


def test_the_command_checker_finds_unknown_commands_options_choices_and_arguments():
    assert command_problems("streams list --state active|parked --json") == []
    assert command_problems("restore NAME | --latest -o FILE|DIR|- [--instance NAME]") == []
    assert command_problems("--config x.json --json status [--watch [SECONDS]]") == []
    assert command_problems("streams lst") == ["streamer streams has no command 'lst'"]
    assert command_problems("status --wach") == ["streamer status has no option --wach"]
    assert command_problems("streams list --state unfinished") == [
        "streamer streams list --state: no choice unfinished"
    ]
    assert command_problems("verify A B") == ["streamer verify takes 1 argument(s), not 2"]
    text = "```sh\nX=1 streamer run --once  # a comment\n```\n```\nstreamer nothing\n```\n"
    text += "```sh\nsudo -u streamer /opt/streamer/bin/streamer doctor >log 2>&1\n```\n"
    assert streamer_commands(text) == ["run --once", "doctor"]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_streamer_command_is_one_there_is(path):
    commands = streamer_commands(path.read_text())
    assert [(c, p) for c in commands for p in command_problems(c)] == []


def test_the_readme_shows_commands_and_make_targets_there_are():
    text = (ROOT / "README.md").read_text()
    assert len(streamer_commands(text)) >= 10
    targets = {
        t for rule in MAKE_TARGET.findall((ROOT / "Makefile").read_text()) for t in rule.split()
    }
    code = code_blocks(text) + re.findall(r"`([^`\n]+)`", "\n".join(outside_code_blocks(text)))
    named = {target for line in code for target in MAKE.findall(line)}
    assert {"test", "run"} <= named
    assert sorted(named - targets) == []


# Architecture: the module map in docs/architecture.md is the package's modules, both
# ways, and its diagram names every message on the arrow it travels.

ARCHITECTURE = DOCS / "architecture.md"
# A line of the map that names a module (`name.py`) or a folder (`name/`), then its words.
MAP_ENTRY = re.compile(r"^( *)([a-z_][a-z0-9_]*(?:\.py|/))(?:\s|$)")


def module_map(path: Path) -> set[str]:
    """The modules the `## Module map` block of a Markdown file names, as paths from the
    project (`streamer/cli/doctor.py`): a name ending in `/` is a folder, and the names
    indented two more below it are in it. A line indented deeper than that carries on a
    description."""
    modules: set[str] = set()
    folders: list[tuple[int, str]] = []  # (indent, name) of the folders the line is in
    for line in code_blocks(section(path, "Module map")):
        entry = MAP_ENTRY.match(line)
        indent = len(line) - len(line.lstrip())
        if entry is None or (folders and indent > folders[-1][0] + 2):
            continue
        while folders and folders[-1][0] >= indent:
            folders.pop()
        name = entry.group(2)
        if name.endswith("/"):
            folders.append((indent, name))
        else:
            modules.add("".join(folder for _, folder in folders) + name)
    return modules


def package_modules() -> set[str]:
    """Every module of the package, as a path from the project; a package's `__init__.py`
    and `__main__.py` go by its folder's name, and have no line of their own."""
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / "streamer").rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }


def test_the_module_map_reader_follows_folders_and_skips_descriptions(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Module map\n\n```\nstreamer/\n  cli/         the command:\n"
        "    doctor.py    `doctor`, and a description\n"
        "                 chunks/ and notes.py, the same description going on\n"
        "  supervisor/  the main process:\n    daemon.py    its life\n"
        "  config.py    settings\n```\n\n## Glossary\n\n```\nstreamer/\n  gone.py\n```\n"
    )
    assert module_map(page) == {
        "streamer/cli/doctor.py",
        "streamer/supervisor/daemon.py",
        "streamer/config.py",
    }


def test_the_module_map_in_the_architecture_is_the_package_s_modules():
    mapped = module_map(ARCHITECTURE)
    modules = package_modules()
    assert "streamer/supervisor/workers.py" in mapped
    missing = sorted(modules - mapped)
    assert missing == [], f"not in the module map of docs/architecture.md: {missing}"
    gone = sorted(mapped - modules)
    assert gone == [], f"in the module map of docs/architecture.md, no such module: {gone}"


@pytest.mark.parametrize("package", ["supervisor", "uploader"])
def test_each_process_package_lists_its_roles_as_its_modules(package):
    """The roles a process package's docstring lists, one module each, are its modules."""
    folder = ROOT / "streamer" / package
    listed = set(
        re.findall(
            r"^- (\w+) ", ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), re.M
        )
    )
    modules = {path.stem for path in folder.glob("*.py") if path.name != "__init__.py"}
    assert listed == modules, (
        f"listed, no such module: {listed - modules}; not listed: {modules - listed}"
    )


def sent_messages() -> dict[str, set[str]]:
    """The messages supervisor and uploaders send, by way: the tagged Structs of
    `streamer.messages` that its `Command` union decodes (to an uploader) and those its
    `Event` union decodes (to the supervisor)."""
    return {
        way: {kind.__name__ for kind in typing.get_args(union)}
        for way, union in (("commands", messages.Command), ("events", messages.Event))
    }


def tagged_structs() -> set[str]:
    """Every tagged Struct `streamer.messages` defines, but a base the others share."""
    return {
        value.__name__
        for value in vars(messages).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == messages.__name__
        and value.__struct_config__.tag is not None
        and not value.__subclasses__()
    }


def test_the_diagram_names_every_message_on_the_arrow_it_travels():
    sent = sent_messages()
    assert {"Assign", "Stop"} <= sent["commands"] and {"ChunkCommitted"} <= sent["events"]
    assert sent["commands"] | sent["events"] == tagged_structs(), "a message in no union"
    # The diagram's commands arrow comes first, then its events arrow: each name is
    # written below the arrow it goes on, before the next one.
    diagram = code_blocks(section(ARCHITECTURE, "How it works"))
    labels = [i for i, line in enumerate(diagram) if re.search(r"\b(commands|events)\b", line)]
    assert len(labels) == 2, "the diagram labels two arrows, `commands` then `events`"
    ways = {
        "commands": "\n".join(diagram[labels[0] : labels[1]]),
        "events": "\n".join(diagram[labels[1] :]),
    }
    for way, names in sent.items():
        missing = sorted(n for n in names if not re.search(rf"\b{n}\b", ways[way]))
        where = f"by the {way} arrow in the diagram of docs/architecture.md"
        assert missing == [], f"not {where}: {missing}"
