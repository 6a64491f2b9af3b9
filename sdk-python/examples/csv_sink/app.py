"""`py-csv-sink`: writes JSON objects as CSV rows to a file in a directory granted `rw`.

    [plugins.report]
    path = "py-csv-sink.wasm"
    config = { path = "/out/report.csv", columns = ["seq", "name", "price"] }
    grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

The first line is the header. A missing field is an empty cell, a nested value is its JSON
text. A payload that is not a JSON object is an `invalid-data` error for that record (the
pipeline's `on_error` decides what becomes of it); a failed write is `retryable`. Rows are
flushed to the OS before `write` answers, so `ok` means the row is in the file.
"""

import csv
import json

import patchbay_sdk as pb


class CsvSink(pb.Sink):
    name = "py-csv-sink"
    version = "0.1.0"
    description = "Writes JSON objects as CSV rows (with a header line) to a granted file."
    config_keys = [
        pb.ConfigKey(
            "path",
            "The CSV file as the plugin sees it, inside a directory granted rw, e.g. /out/report.csv.",
            required=True,
        ),
        pb.ConfigKey(
            "columns",
            'Array of the top-level fields to write, in order, e.g. ["id", "total"].',
            required=True,
        ),
        pb.ConfigKey("append", "Boolean: add rows to an existing file (no second header).", default="false"),
    ]

    def init(self, config: pb.Config) -> None:
        columns = config.json("columns", expect=list)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise config.invalid("columns", 'a non-empty array of field names, e.g. ["id", "total"]')
        self.columns = columns
        path = config.required("path")
        append = config.bool("append", False)
        try:
            self.file = open(path, "a" if append else "w", newline="", encoding="utf-8")
        except OSError as e:
            raise pb.fatal(
                f"config key `path`: cannot open {path!r} for writing ({e.strerror}); "
                "grant its directory with mode rw"
            ) from None
        self.writer = csv.writer(self.file)
        if not append or self.file.tell() == 0:
            self.writer.writerow(columns)
            self.file.flush()
        self.rows = 0

    def write(self, message: pb.Message) -> None:
        doc = pb.parse_json(message.payload)  # not JSON: invalid-data, as in every SDK
        if not isinstance(doc, dict):
            raise pb.invalid_data(f"payload is a JSON {type(doc).__name__}, not an object")
        self.writer.writerow([_cell(doc.get(c)) for c in self.columns])
        self.rows += 1

    def flush(self) -> None:
        self.file.flush()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


Plugin, SinkApi = pb.export_sink(CsvSink)
