"""Rewrite the schemas in this directory from upstream files (descriptions dropped, nothing else).

    python tests/deploy/schemas/refresh.py crd  KEDA_OR_PROM_OPERATOR_CRD.yaml SOURCE_LABEL
    python tests/deploy/schemas/refresh.py compose COMPOSE_SPEC.json SOURCE_LABEL

SOURCE_LABEL records where the file came from (repository, tag, path); it is kept in each schema
under `x-source`. The files used:
- kedacore/keda v2.20.2 config/crd/bases/keda.sh_scaledobjects.yaml
- prometheus-operator/prometheus-operator v0.93.0
  example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml
- compose-spec/compose-spec schema/compose-spec.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node: Any) -> Any:
    """Drop documentation strings; a property *named* `description` (a mapping) stays."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def write(name: str, document: dict[str, Any]) -> Path:
    path = HERE / name
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def from_crd(crd_path: Path, source: str) -> list[Path]:
    crd = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    spec = crd["spec"]
    written = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        name = f"{spec['group']}_{version['name']}_{spec['names']['kind'].lower()}.json"
        schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
        document = {
            "x-source": source,
            "x-crd": {"group": spec["group"], "version": version["name"], "kind": spec["names"]["kind"]},
            "schema": schema,
        }
        written.append(write(name, document))
    return written


def from_compose_spec(spec_path: Path, source: str) -> list[Path]:
    schema = strip_descriptions(json.loads(spec_path.read_text(encoding="utf-8")))
    schema["x-source"] = source
    return [write("compose-spec.json", schema)]


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("crd", "compose"):
        sys.stderr.write(__doc__ or "")
        return 2
    kind, path, source = argv
    written = (from_crd if kind == "crd" else from_compose_spec)(Path(path), source)
    for item in written:
        sys.stdout.write(f"wrote {item.relative_to(HERE.parents[2])}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
