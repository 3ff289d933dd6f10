"""docs/asyncapi.yaml as a check of what the service sends: which of the document's channels a topic
is, and whether a payload is one of the messages the document allows there (by its JSON Schema).
The tests check every message the service sends with it (tests/conftest.py), and so does
`scripts/request.py --check`. Needs PyYAML and jsonschema (requirements-dev.txt)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
HERE = "urn:asyncapi"  # the document's own address, for the $refs into it


class Contract:
    def __init__(self, path: Path = DOCUMENT):
        self.document = yaml.safe_load(path.read_text())
        self.registry = Registry().with_resource(HERE, Resource.from_contents(self.document,
                                                                              default_specification=DRAFT7))
        sent = {self._name(op["channel"]) for op in self.document["operations"].values() if op["action"] == "send"}
        replies = {self._name(op["reply"]["channel"]) for op in self.document["operations"].values() if "reply" in op}
        # (topic pattern, {message name: validator}) of every channel the service sends on; a reply
        # channel also takes topics below it (an MQTT 5 Response Topic)
        self.channels = [(self._pattern(self.document["channels"][name]["address"], below=name in replies),
                          self._messages(name)) for name in sorted(sent | replies)]

    def problems(self, topic: str, payload: bytes) -> list[str]:
        """What is wrong with a message the service sent on `topic`: nothing if it is one of the
        messages the document allows on that channel, else each message's first objection."""
        for pattern, messages in self.channels:
            if pattern.fullmatch(topic):
                break
        else:
            return [f"{topic}: not a channel the service sends on in {DOCUMENT.name}"]
        try:
            value = json.loads(payload) if payload else ""
        except ValueError as exc:
            return [f"{topic}: not JSON ({exc}): {payload[:200]!r}"]
        objections = []
        for name, validator in messages.items():
            error = next(iter(sorted(validator.iter_errors(value), key=lambda e: len(e.absolute_path))), None)
            if error is None:
                return []
            where = "/".join(str(p) for p in error.absolute_path) or "(the payload)"
            objections.append(f"as {name}: at {where}: {error.message[:300]}")
        return [f"{topic}: {payload[:300]!r} is none of its messages: " + "; ".join(objections)]

    def examples(self):
        """(message name, payload) of every example in the document."""
        for name, message in self.document["components"]["messages"].items():
            for example in message.get("examples", ()):
                yield name, example["payload"]

    def validator(self, message: str) -> Draft7Validator:
        """The check of one message's payload (a name under components/messages)."""
        return Draft7Validator({"$ref": f"{HERE}#/components/messages/{message}/payload"}, registry=self.registry)

    def _messages(self, channel: str) -> dict[str, Draft7Validator]:
        return {self._name(ref): self.validator(self._name(ref))
                for ref in self.document["channels"][channel]["messages"].values()}

    @staticmethod
    def _name(ref: dict) -> str:
        return ref["$ref"].rsplit("/", 1)[1]

    @staticmethod
    def _pattern(address: str, below: bool) -> re.Pattern:
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/+#]+", re.escape(address))
        return re.compile(pattern + ("(/.+)?" if below else ""))
