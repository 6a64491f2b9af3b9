"""`py-redact`: blanks fields of JSON objects by dotted path (`user.email`), e.g. before
messages leave for a system that must not see personal data.

    [plugins.redact]
    path = "py-redact.wasm"
    config = { fields = ["email", "card.number"], mask = "***" }

A payload that is not a JSON object fails with `invalid-data`; a message with none of the fields
passes on untouched.
"""

import patchbay_sdk as pb


class Redact(pb.Transform):
    name = "py-redact"
    version = "0.1.0"
    description = "Replaces the values of JSON fields (dotted paths) with a mask."
    config_keys = [
        pb.ConfigKey(
            "fields",
            'Array of dotted field paths to blank, e.g. ["email", "card.number"].',
            required=True,
        ),
        pb.ConfigKey("mask", "Text that replaces each value.", default="***"),
    ]

    def init(self, config: pb.Config) -> None:
        fields = config.json("fields", expect=list)
        if fields is None:
            raise pb.fatal("config key `fields` is required: an array of dotted field paths")
        if not all(isinstance(f, str) and f and "" not in f.split(".") for f in fields):
            raise config.invalid("fields", 'an array of dotted paths like ["user.email"]')
        self.paths = [f.split(".") for f in fields]
        self.mask = config.get("mask", "***")
        self.redacted = 0

    def process(self, message: pb.Message):
        doc = pb.parse_json(message.payload)  # not JSON: invalid-data, as in every SDK
        if not isinstance(doc, dict):
            raise pb.invalid_data(f"payload is a JSON {type(doc).__name__}, not an object")
        changed = 0
        for path in self.paths:
            parent = doc
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and path[-1] in parent:
                parent[path[-1]] = self.mask
                changed += 1
        if not changed:
            return pb.KEEP
        pb.metrics.counter_add("redacted_fields_total", changed)
        return doc


Plugin, TransformApi = pb.export_transform(Redact)
