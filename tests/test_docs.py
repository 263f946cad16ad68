"""The documentation is short where it must be, speaks of the project only, and its links resolve.

- README.md stays a user guide: at most 250 lines (details live in docs/).
- README.md, docs/*.md and the Python sources carry no development-history words: issue numbers,
  "target … met", "earlier run", "this release", "the spec" (cite the paper or the official code instead).
- Every relative link in README.md, CONTRIBUTING.md and docs/*.md points at an existing file, and at an
  existing heading when it names an anchor (GitHub's anchor rule).
- The README's test command is the command CI runs (`.ci/run`), character for character.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, ROOT / "CONTRIBUTING.md", *DOCS]
# Python that ships or that users run: the package, and example / benchmark scripts where the repository has them.
PYTHON = sorted(p for d in ("src", "examples", "benchmarks") for p in (ROOT / d).rglob("*.py"))

MAX_README_LINES = 250

# Prose phrases only: code identifiers such as a variable `spec` or `ISSUE_REFERENCE` do not match.
INTERNAL_PHRASES = [
    r"\bissues? #?\d+",
    r"\bissue(?:'s)? (?:reference|figure|number)",
    r"\btargets? .{0,40}\bmet\b",
    r"\bearlier runs?\b",
    r"\bthis release\b",
    r"\bthis session\b",
    r"\bthe spec\b",
    r"\bspec §",
    r"\bspec's\b",
    r"\bin the spec\b",
]
INTERNAL = re.compile("|".join(f"(?:{p})" for p in INTERNAL_PHRASES), re.IGNORECASE)

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, in_code = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            out.append((number, line))
    return out


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces → '-'.

    >>> github_anchor("Real data (`fusionseg bench real-data`)")
    'real-data-fusionseg-bench-real-data'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) → text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        out.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link that is not a URL (inline code and code blocks left out)."""
    out = []
    for number, line in _prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)
        for match in [*LINK.finditer(line), *IMAGE.finditer(line)]:
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                out.append((number, target))
    return out


def test_github_anchor_rule():
    assert github_anchor("Plug DFF/TIF into your network") == "plug-dfftif-into-your-network"
    assert github_anchor("D-Net (`fusionseg bench dnet`)") == "d-net-fusionseg-bench-dnet"
    assert github_anchor("Use with nnU-Net") == "use-with-nnu-net"
    assert github_anchor("See [the docs](docs/cli.md) now") == "see-the-docs-now"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_internal_phrase_patterns_hit_prose_not_code():
    hits = [
        "see issue 12",
        "issue reference BasicUNet",
        "target ≥1.5×: met",
        "an earlier run gave",
        "in this release",
        "as the spec says",
        "spec §3",
    ]
    misses = [
        "format(value, spec)",
        "ISSUE_REFERENCE[d]",
        "for spec in specs:",
        "parse_model_spec(spec)",
        "the target spacing",
        "targets, valid = layout.targets(labels)",
        "metrics",
    ]
    assert [h for h in hits if not INTERNAL.search(h)] == []
    assert [m for m in misses if INTERNAL.search(m)] == []


@pytest.mark.parametrize("path", MARKDOWN + PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_words(path: Path):
    found = [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in INTERNAL.finditer(line)
    ]
    assert found == [], "development-history words (say what the project does instead):\n" + "\n".join(found)


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_links_are_found():
    """The link scanner sees the README's links (a scanner that finds nothing would pass every file)."""
    targets = [t for _, t in relative_links(README)]
    assert any(t.startswith("docs/") for t in targets), targets


def _code_lines(path: Path) -> list[str]:
    """The lines inside fenced code blocks."""
    out, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif in_code:
            out.append(line.strip())
    return out


def test_ci_runs_the_readme_test_command():
    commands = [line for line in _code_lines(README) if line.startswith("python3 -m venv") and "pytest" in line]
    assert len(commands) == 1, f"README.md should show one install-and-test command, found {commands}"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert commands[0] in ci_lines, f".ci/run does not run the README's test command:\n{commands[0]}"
    contributing = [line for line in _code_lines(ROOT / "CONTRIBUTING.md") if line.startswith("python3 -m venv")]
    assert contributing == commands, "CONTRIBUTING.md shows another test command than the README"
