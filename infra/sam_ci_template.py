#!/usr/bin/env python3
"""Write the template that CI's `sam build` uses: infra/template.yaml for the host's architecture.

The deployed functions are x86_64 (Globals.Function.Architectures; compare's fast Dice kernel
exists only there). CI builds the same functions, with the same `BuildMethod: rust-cargolambda`,
for the host's architecture (x86_64 on CI machines, which have only the x86_64 Rust standard
library), so on an arm64 host the architecture is the one thing that changes.
Nothing else changes: CodeUris become absolute (the output lives in infra/.build/), and the
script fails if a function sets its own Architectures (the override would not reach it).

usage: sam_ci_template.py TEMPLATE OUT.json ARCH   (ARCH: x86_64 or arm64)
"""

import json
import os
import sys

from samtranslator.yaml_helper import yaml_parse


def main(argv):
    if len(argv) != 4 or argv[3] not in ("x86_64", "arm64"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src, out, arch = argv[1:]
    with open(src, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    base = os.path.dirname(os.path.abspath(src))

    function_globals = template.get("Globals", {}).get("Function", {})
    if "Architectures" not in function_globals:
        print(f"{src}: Globals.Function.Architectures not found", file=sys.stderr)
        return 1
    function_globals["Architectures"] = [arch]
    functions = 0
    for name, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        functions += 1
        props = res.get("Properties", {})
        if "Architectures" in props:
            print(f"{src}: {name} sets its own Architectures", file=sys.stderr)
            return 1
        if res.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
            print(f"{src}: {name} is not built with rust-cargolambda", file=sys.stderr)
            return 1
        props["CodeUri"] = os.path.normpath(os.path.join(base, props["CodeUri"]))

    with open(out, "w", encoding="utf-8") as f:
        json.dump(template, f, indent=1)
    print(f"sam: {functions} functions for {arch} -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
