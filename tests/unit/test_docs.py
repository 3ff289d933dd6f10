"""The README and the operator's guide are a map: every link in them leads somewhere, every
script they tell a newcomer to run exists, and the readings they show are what the device types'
definitions accept."""

import json
import re

import pytest
from conftest import ROOT

from actors.devices import BUILTIN_TYPES

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "docs" / "protocol.md"]


def anchors(path):
    """GitHub's anchors for a Markdown file's headings."""
    found = set()
    for line in path.read_text().splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(doc):
    text = doc.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and anchor not in anchors(path):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_map_a_newcomer_can_read():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 500  # a map: the protocol is in docs/protocol.md, operations in deploy/README.md
    assert "[deploy/README.md](deploy/README.md)" in text
    for script in re.findall(r"^(scripts/\S+)", text, re.M):
        assert (ROOT / script).exists(), script


DEVICE_MESSAGES = {"Temperature Device Message": "temperature", "Power Status Device Message": "power",
                   "Fingerprint Sensor Message": "fingerprint"}


def test_the_readmes_readings_are_what_the_device_type_definitions_accept():
    """The README's per-type message formats, checked against the definitions (actors/devices/):
    each device message block parses as its type, and names exactly its fields."""
    readme = (ROOT / "README.md").read_text()
    for title, kind in DEVICE_MESSAGES.items():
        block = re.search(rf"### {title} \(from device\)\n```json\n(.*?)```", readme, re.S)[1]
        device = BUILTIN_TYPES[kind]
        device.parse(block.encode())  # raises InvalidMessage with the reason if not
        assert list(json.loads(block)) == ["device_id", *device.reading_fields, "timestamp"], kind
    published = re.findall(r"mosquitto_pub -q 1 -t (home/\w+) -m '(\{.*?\})'", readme)
    readings = [(topic, payload) for topic, payload in published if topic in BUILTIN_TYPES.by_reading_topic]
    assert readings, "the Quick start publishes a reading"
    for topic, payload in readings:
        BUILTIN_TYPES.by_reading_topic[topic].parse(payload.encode())
