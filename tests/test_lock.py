"""constraints.txt, the lock the README's install commands and CI use, agrees with pyproject.toml,
and this environment was installed from it."""

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REFRESH = "run scripts/refresh_lock.sh and commit constraints.txt"


def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert m, f"constraints.txt: {line!r} is not NAME==VERSION; {REFRESH}."
        name = canonicalize_name(m[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(m[2])
    return pins


def declared() -> list[tuple[str, Requirement]]:
    """Every requirement of pyproject.toml with the extra it belongs to ('' for the core)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [("", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(extra, Requirement(r)) for r in items if not Requirement(r).name == "dynalab"]
    return reqs


def test_every_requirement_of_pyproject_is_locked_at_a_version_it_allows():
    pins, env = lock(), default_environment()
    problems = []
    for extra, req in declared():
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        where = f"{req} ({'extra ' + extra if extra else 'core'})"
        if name not in pins:
            problems.append(f"{where} is not in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where} does not allow the locked {name}=={pins[name]}")
    assert not problems, "; ".join(problems) + f"; {REFRESH}."


def test_the_lock_does_not_pin_dynalab_itself_or_anything_unversioned():
    assert "dynalab" not in lock()


def test_this_environment_was_installed_from_the_lock():
    # The README's commands install with `-c constraints.txt`: every locked package present here must
    # be at its locked version. A mismatch means the install ignored the lock (or the lock is stale).
    pins = lock()
    wrong = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in pins and Version(dist.version) != pins[name]:
            wrong.append(f"{name} {dist.version} (locked {pins[name]})")
    assert not wrong, (f"installed versions differ from constraints.txt: {', '.join(sorted(wrong))}; install with the "
                       "README's command (pip install -c constraints.txt ...), or " + REFRESH + ".")


def test_run_json_records_the_locked_versions():
    from dynalab import rundir

    pins = lock()
    recorded = rundir.package_versions()
    assert set(recorded) <= set(pins), "run.json records a package the lock does not pin"
    assert {name: Version(v) for name, v in recorded.items()} == {name: pins[name] for name in recorded}


def test_the_readme_commands_and_ci_install_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):readme.index("## Usage")]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert len(commands) == 2, "the Quick start has its two commands: set up and train, set up and test"
    for command in commands:
        assert "pip install -c constraints.txt -e " in command, command
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1], "CI must run the README's test command verbatim"
