"""The repository speaks of the project alone: no development-process words in what ships.

Scanned: README.md, CHANGELOG.md, docs/, benchmarks/, configs/, convert/, examples/, quantface_jax/
and tests/ (text files; not this file, which must spell out what it flags). Flagged: the kinds of
`PATTERNS` (words for periods of work and for the machines they ran on, issue numbers, citations
of a design document outside the repository); `ALLOWED` spares pytest's fixture scope.
"""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]  # the repository's root


SCANNED = (
  "README.md",
  "CHANGELOG.md",
  "docs",
  "benchmarks",
  "configs",
  "convert",
  "examples",
  "quantface_jax",
  "tests",
)
TEXT_SUFFIXES = {
  ".py",
  ".md",
  ".ipynb",
  ".txt",
  ".json",
  ".jsonl",
  ".toml",
  ".yaml",
  ".yml",
  ".cfg",
}
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints"}

PATTERNS = {
  "session": re.compile(r"\bsessions?\b", re.IGNORECASE),
  "lease": re.compile(r"\bleas(?:e|es|ed|ing)\b", re.IGNORECASE),
  "lent machine": re.compile(r"\blent\b|\bcall[- ]limits?\b", re.IGNORECASE),
  "issue number": re.compile(r"\bissues?\s*#?\d+|(?:^|[\s(\[`])#\d+\b", re.IGNORECASE),
  "DESIGN citation": re.compile(r"\bDESIGN(?:\.md|\s*§)"),
}
# Uses of a flagged word that are about the code: pytest's fixture scope.
ALLOWED = re.compile(r"""scope\s*=\s*["']session["']""")


def scanned_files():
  for name in SCANNED:
    root = REPO / name
    paths = [root] if root.is_file() else sorted(root.rglob("*"))
    for path in paths:
      parts = set(path.relative_to(REPO).parts)
      if path == pathlib.Path(__file__).resolve():
        continue
      if path.is_file() and path.suffix in TEXT_SUFFIXES and not parts & SKIPPED_DIRS:
        yield path


def find_process_words(text: str) -> list[tuple[int, str, str]]:
  """(line number, kind, line) of each flagged line of ``text``."""
  found = []
  for number, line in enumerate(text.splitlines(), start=1):
    cleaned = ALLOWED.sub("", line)
    for kind, pattern in PATTERNS.items():
      if pattern.search(cleaned):
        found.append((number, kind, line.strip()))
  return found


def test_the_checker_flags_process_words_and_spares_the_code():
  flagged = "Session 9 (issue #7, issue 3, see #12) on a leased, lent H200; DESIGN §2.5; DESIGN.md"
  kinds = {kind for _, kind, _ in find_process_words(flagged)}
  assert kinds == set(PATTERNS)
  clean = '@pytest.fixture(scope="session")\nrelease = please(color="#1f77b4")  # docs/design.md §2'
  assert find_process_words(clean) == []


def test_no_process_words_in_the_repository():
  problems = []
  for path in scanned_files():
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
      continue
    found = find_process_words(text)
    problems += [
      f"{path.relative_to(REPO)}:{number}: {kind}: {line[:100]}" for number, kind, line in found[:5]
    ]
    if len(found) > 5:
      problems.append(f"{path.relative_to(REPO)}: {len(found) - 5} more lines")
  assert not problems, "development-process words:\n" + "\n".join(problems)
