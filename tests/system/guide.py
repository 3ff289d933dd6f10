"""deploy/README.md as the check reads it: its fenced bash blocks, in order, each under its headings.

A block whose first line starts with `# Example` is one to adapt, not to paste, and is not run.
Placeholders in angle brackets are filled from PLACEHOLDERS; any other one fails the check."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
PLACEHOLDERS = {"<this repository>": "/srv/mqtt-client.git"}


@dataclasses.dataclass(frozen=True)
class Block:
    section: str  # "Installation on AWS Lightsail / Install"
    line: int
    text: str

    @property
    def example(self) -> bool:
        return self.text.lstrip().startswith("# Example")

    def script(self) -> str:
        text = self.text
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        unknown = re.findall(r"<[a-z][a-z ]+>", text)
        if unknown:
            raise AssertionError(f"deploy/README.md line {self.line}: unknown placeholder {unknown[0]}")
        return text


def blocks(path: Path = GUIDE) -> list[Block]:
    found, headings, fence, language, start = [], {}, None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if fence is not None:
            if line.strip() == "```":
                if language == "bash":  # toml, text: not run
                    found.append(Block(" / ".join(headings[k] for k in sorted(headings)), start, "\n".join(fence)))
                fence = None
            else:
                fence.append(line)
        elif line.startswith("```"):
            fence, language, start = [], line.strip()[3:], number
        elif m := re.match(r"(#{2,3}) (.*)", line):
            level = len(m.group(1))
            headings = {k: v for k, v in headings.items() if k < level}
            headings[level] = m.group(2)
    return found


def section(name: str, path: Path = GUIDE) -> list[Block]:
    return [b for b in blocks(path) if name in b.section]
