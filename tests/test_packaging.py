"""What is installed is pinned: constraints.txt covers every package streamer and its tests
depend on, at versions setup.cfg allows, and the distribution has a name of its own."""

from __future__ import annotations

import configparser
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    found = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            found[canonicalize_name(name)] = version.strip()
    return found


def declared() -> list[Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    options = setup["options"]["install_requires"] + setup["options.extras_require"]["test"]
    return [Requirement(line) for line in options.split("\n") if line.strip()]


def dependencies(name: str, seen: set[str]) -> set[str]:
    """`name` and everything it needs, as installed here (extras left out)."""
    key = canonicalize_name(name)
    if key in seen:
        return seen
    seen.add(key)
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            dependencies(requirement.name, seen)
    return seen


def test_every_declared_requirement_is_pinned_within_its_range():
    pinned = pins()
    for requirement in declared():
        version = pinned.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_every_installed_dependency_is_pinned_and_nothing_else():
    needed = set()
    for requirement in declared():
        dependencies(requirement.name, needed)
    assert needed == set(pins()), "constraints.txt differs from what is installed"
    installed = {name: metadata.version(name) for name in needed}
    assert installed == pins(), "installed at other versions than pinned"


def test_the_distribution_has_a_name_of_its_own_and_keeps_the_command():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["name"] == "streamer-s3"  # "streamer" on PyPI is another project
    assert re.search(
        r"^\s*streamer = streamer\.cli:main$",
        setup["options.entry_points"]["console_scripts"],
        re.M,
    )
