"""The commands of README.md, by who runs them.

Every fenced block of README.md that holds commands (```sh) or code (```python) is preceded by a
marker line `<!-- run: WHO -->`: `ci` blocks are run verbatim by .ci/run (install, quick start,
tests), `test` blocks by tests/test_readme.py (shortened). `python tests/readme_commands.py ci`
prints the ci commands, one per line, for .ci/run.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!--\s*run:\s*(\w+)\s*-->")
RUNNERS = ("ci", "test")


def blocks(text=None):
    """[(runner or None, language, [lines])] for every fenced block, in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        runner = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (m := MARKER.fullmatch(lines[j].strip())):
            runner = m.group(1)
        end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        found.append((runner, fence.group(1), lines[i + 1:end]))
        i = end + 1
    return found


def commands(runner, text=None):
    """The shell commands (```sh blocks) that `runner` runs, one string each."""
    return [line for who, lang, body in blocks(text) if who == runner and lang == "sh"
            for line in body if line.strip() and not line.lstrip().startswith("#")]


if __name__ == "__main__":
    print("\n".join(commands(sys.argv[1])))
