"""Parses a Prometheus text exposition (read from stdin) with prometheus_client's own parser and
prints what it read as one JSON object on stdout, for tests/ops.rs:

    {"families": [{"name": ..., "type": ..., "help": ...}],
     "samples": [{"name": ..., "labels": {...}, "value": "1.0"}]}

Values are Python's repr of the float ("inf" for +Inf), which Rust's f64 parser reads; JSON has
no infinity. A text the parser rejects raises, and the non-zero exit fails the test.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    families = []
    samples = []
    for family in text_string_to_metric_families(text):
        families.append(
            {"name": family.name, "type": family.type, "help": family.documentation}
        )
        for sample in family.samples:
            samples.append(
                {
                    "name": sample.name,
                    "labels": dict(sample.labels),
                    "value": repr(float(sample.value)),
                }
            )
    json.dump({"families": families, "samples": samples}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
