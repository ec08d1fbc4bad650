#!/usr/bin/env python3
"""Wait until local services really answer (not merely accept connections).

usage: health.py [--timeout SECONDS] [--once] SERVICE...   (localstack dynamodb seaweedfs)

- localstack: GET /_localstack/health lists s3 and sqs as available/running
- dynamodb:   ListTables answers
- seaweedfs:  S3 ListBuckets with the admin keys answers
Exit 0 when all are healthy, 1 otherwise (the last error of each unhealthy one on stderr).
"""

import json
import sys
import time
import urllib.request
from pathlib import Path

STATE = Path(__file__).resolve().parent / ".state"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _boto(service, endpoint, key="test", secret="test"):
    import boto3
    from botocore.config import Config

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5,
                                      proxies={}, s3={"addressing_style": "path"}))


def localstack():
    with _NO_PROXY.open("http://127.0.0.1:4566/_localstack/health", timeout=3) as r:
        services = json.load(r).get("services", {})
    bad = {s: services.get(s) for s in ("s3", "sqs") if services.get(s) not in ("available", "running")}
    if bad:
        raise RuntimeError(f"services not ready: {bad}")


def dynamodb():
    _boto("dynamodb", "http://127.0.0.1:8000").list_tables(Limit=1)


def seaweedfs():
    admin = json.loads((STATE / "seaweedfs" / "admin.json").read_text())
    _boto("s3", "http://127.0.0.1:8333", admin["accessKey"], admin["secretKey"]).list_buckets()


CHECKS = {"localstack": localstack, "dynamodb": dynamodb, "seaweedfs": seaweedfs}


def main(argv):
    timeout, once, names = 60.0, False, []
    it = iter(argv[1:])
    for a in it:
        if a == "--timeout":
            timeout = float(next(it))
        elif a == "--once":
            once = True
        elif a in CHECKS:
            names.append(a)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    deadline = time.monotonic() + timeout
    pending = {n: "not checked" for n in names}
    while True:
        for n in list(pending):
            try:
                CHECKS[n]()
                del pending[n]
            except Exception as e:  # noqa: BLE001 (any failure means "not yet")
                pending[n] = f"{type(e).__name__}: {e}"
        if not pending:
            return 0
        if once or time.monotonic() > deadline:
            for n, err in pending.items():
                print(f"health: {n} not healthy: {err}", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
