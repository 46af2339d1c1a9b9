"""Validate rendered Kubernetes manifests offline, every object, strictly.

Built-in kinds go through kubernetes-validate with --strict semantics (unknown fields
are errors). CRD kinds, which kubernetes-validate cannot know, are checked against a
schema of our own under .ci/schemas/ (named in CRD_SCHEMAS); a kind that is neither is
an error, so a new CRD can never be skipped silently. Prints one line per object.

    python .ci/validate_manifests.py [--k8s-version 1.35.0] FILE.yaml...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json"}


def check(doc: dict, version: str) -> str:
    """Validate one object; return how it was validated, raise ValueError on a problem."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        if errors:
            raise ValueError(
                "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            )
        return (
            f"CRD: not known to kubernetes-validate; checked against .ci/schemas/{CRD_SCHEMAS[key]}"
        )
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise ValueError(f"{path}: {exc.message}") from exc
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ValueError(f"no schema for {key[0]} {key[1]} (add one to CRD_SCHEMAS?)") from exc
    return f"kubernetes-validate --strict {version}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-version", default="1.35.0")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    failures = objects = 0
    for path in args.files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not docs:
            print(f"FAIL {path}: no objects rendered")
            failures += 1
        for doc in docs:
            objects += 1
            name = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                how = check(doc, args.k8s_version)
            except ValueError as exc:
                failures += 1
                print(f"FAIL {name}: {exc}")
            else:
                print(f"ok   {name} ({how})")
    print(f"{objects} objects in {len(args.files)} files, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
