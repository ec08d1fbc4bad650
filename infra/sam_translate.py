#!/usr/bin/env python3
"""Expand the SAM template into plain CloudFormation offline (stage 2 of infra/lint.sh).

What `sam package` + the CloudFormation transform would do, without AWS: every function's local
CodeUri becomes `s3://placeholder/<name>.zip`, and the translator gets an empty managed-policy
map (no IAM lookups). SAM errors (unknown event properties, bad event types, ...) are printed and
exit 1; otherwise the expanded template is written as JSON for cfn-lint.

usage: sam_translate.py TEMPLATE OUT.json
"""

import json
import os
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class _NoManagedPolicies:
    """The translator's managed-policy loader: no lookups, nothing known."""

    def load(self):
        return {}


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src, out = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        template = yaml_parse(f.read())

    for name, res in template.get("Resources", {}).items():
        if res.get("Type") == "AWS::Serverless::Function":
            props = res.setdefault("Properties", {})
            if isinstance(props.get("CodeUri"), str) and not props["CodeUri"].startswith("s3://"):
                props["CodeUri"] = f"s3://placeholder/{name}.zip"

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        expanded = transform(template, {}, _NoManagedPolicies())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"SAM error: {cause.message}", file=sys.stderr)
        return 1

    with open(out, "w", encoding="utf-8") as f:
        json.dump(expanded, f, indent=1, sort_keys=True)
    print(f"expanded {len(expanded.get('Resources', {}))} resources -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
