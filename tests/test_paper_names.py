"""The two papers are named by their titles (or STFL / FTFL) wherever a user reads, never by the
design documents' file names ("seed 000", "seed 001"), which in RL read as random seeds."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from dynalab import cli

ROOT = Path(__file__).resolve().parents[1]
# "seed 000", "seed_001", "seeds/000_...", "000_<hash>.txt": the ways the file names leak.
LEAK = re.compile(r"seed[ _-]?00[01]\b|seeds/00[01]|\b00[01]_[0-9a-f]{6,}", re.IGNORECASE)


def _user_facing_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CITATION.cff", ROOT / "pyproject.toml"]
    for folder in ("src", "scripts", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".toml", ".md", ".sh"}
                  and ".egg-info" not in str(p)]
    return [p for p in files if p.is_file()]


def test_no_file_names_of_the_papers_in_sources_presets_or_docs():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _user_facing_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if LEAK.search(line)]
    assert not hits, "\n".join(hits)


def test_the_pattern_catches_the_leaks_it_is_for():
    for text in ("SAC at replay ratio 20 (seed 000, Table 1)", "see seed_001", "../shared/seeds/000_0778777c.txt"):
        assert LEAK.search(text), text
    for text in ("--seed 0", "1_000_000", "seed 100"):
        assert not LEAK.search(text), text


@pytest.mark.parametrize("command", [*cli.COMMANDS, None])
def test_cli_help_names_no_paper_by_file_name(command):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):  # tyro exits after help
        cli.main([command, "--help"] if command else ["--help"])
    text = out.getvalue()
    assert text.strip() and not LEAK.search(text), text
    if command is None:  # the overview says what the short forms used everywhere stand for
        assert "Stealing That Free Lunch" in text and "Fixing That Free Lunch" in text


def test_readme_cites_both_papers_with_bibtex():
    readme = (ROOT / "README.md").read_text()
    refs = readme[readme.index("## References"):]
    refs = refs[:refs.index("\n## ", 1)]
    entries = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", refs, re.S))
    assert set(entries) == {"barkley2025stealing", "barkley2025fixing"}
    assert "Stealing That Free Lunch" in entries["barkley2025stealing"] and "2025" in entries["barkley2025stealing"]
    assert "2510.01457" in entries["barkley2025fixing"] and "Fixing That Free Lunch" in entries["barkley2025fixing"]
    for body in entries.values():  # balanced braces: a BibTeX parser would choke otherwise
        assert body.count("{") == body.count("}")


def test_citation_cff_is_valid_and_names_both_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"].startswith("dynalab") and cff["authors"]
    for key in ("message", "type", "version", "license"):
        assert cff[key]
    titles = [ref["title"] for ref in cff["references"]]
    assert any(t.startswith("Stealing That Free Lunch") for t in titles)
    assert any(t.startswith("Fixing That Free Lunch") for t in titles)
    import dynalab
    assert str(cff["version"]) == dynalab.__version__
