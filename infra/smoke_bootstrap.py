#!/usr/bin/env python3
"""Smoke check of built Lambda bootstraps: each answers one invocation through the Runtime API.

A stand-in for the Lambda service (no Docker, no AWS): a loopback HTTP server speaks the Runtime
API (`GET /2018-06-01/runtime/invocation/next`, `POST .../{id}/response`, `.../{id}/error`,
`/init/error`). Each bootstrap is started with the environment Lambda would give it (the
template's variables, dummy credentials, `AWS_LAMBDA_RUNTIME_API` pointing at the server), gets
one event that needs no AWS call, and must POST the expected response within the time limit:

  api                  API Gateway HTTP API (v2) `GET /api/v1/<no such route>` -> statusCode 404
  fan-out/compare/solve  an SQS batch with no records -> {"batchItemFailures": []}

That proves more than "the file is an ELF": the binary loads on this libc, reads its
configuration, builds its SDK clients and runs the Lambda runtime loop with the real handler.

usage: smoke_bootstrap.py NAME=PATH/TO/bootstrap [NAME=PATH ...]
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid

TIMEOUT_S = float(os.environ.get("SMOKE_TIMEOUT_S", "30"))
PREFIX = "/2018-06-01/runtime"

NOT_A_ROUTE = "/api/v1/smoke-check-not-a-route"
API_EVENT = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": NOT_A_ROUTE,
    "rawQueryString": "",
    "headers": {"host": "abc.execute-api.us-east-1.amazonaws.com"},
    "requestContext": {
        "accountId": "123456789012", "apiId": "abc", "domainName": "abc.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "abc", "requestId": "smoke", "routeKey": "$default", "stage": "$default",
        "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0,
        "http": {"method": "GET", "path": NOT_A_ROUTE, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
                 "userAgent": "smoke"},
    },
    "isBase64Encoded": False,
}
SQS_EVENT = {"Records": []}


def api_ok(body):
    return body.get("statusCode") == 404


def sqs_ok(body):
    return body == {"batchItemFailures": []}


CASES = {
    "api": (API_EVENT, api_ok),
    "fan-out": (SQS_EVENT, sqs_ok),
    "compare": (SQS_EVENT, sqs_ok),
    "solve": (SQS_EVENT, sqs_ok),
}

# What the template's Globals give every function (values are placeholders: nothing is called).
FUNCTION_ENV = {
    "TABLE_NAME": "smoke-table",
    "WORK_BUCKET": "smoke-work",
    "UPLOAD_BUCKET": "smoke-uploads",
    "SHARD_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/shard",
    "SOLVE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/solve",
    "UPLOAD_CREDENTIALS_TTL_SECS": "3600",
    "EXTERNAL_UPLOAD_ENABLED": "true",
    "UPLOAD_ROLE_ARN": "arn:aws:iam::123456789012:role/smoke-upload",
    "INGEST_DEAD_LETTER_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:ingest-dlq",
    "SHARD_DEAD_LETTER_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:shard-dlq",
    "SOLVE_DEAD_LETTER_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:solve-dlq",
    "RUST_LOG": "info",
    "AWS_LAMBDA_LOG_FORMAT": "JSON",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
    "AWS_SESSION_TOKEN": "x",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_LOG_STREAM_NAME": "smoke",
    "LAMBDA_TASK_ROOT": "/var/task",
}


class RuntimeApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, event):
        super().__init__(("127.0.0.1", 0), Handler)
        self.event = event
        self.request_id = str(uuid.uuid4())
        self.served = False
        self.result = None  # ("response" | "error" | "init-error", parsed body)
        self.done = threading.Event()
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    server: RuntimeApi

    def log_message(self, *args):
        pass

    def _reply(self, code, body=b"{}", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != f"{PREFIX}/invocation/next":
            return self._reply(404)
        with self.server.lock:
            first = not self.server.served
            self.server.served = True
        if not first:  # one invocation only: hold the runtime's next poll until it is stopped
            self.server.done.wait(TIMEOUT_S)
            self.close_connection = True
            return
        self._reply(200, json.dumps(self.server.event).encode(), {
            "Lambda-Runtime-Aws-Request-Id": self.server.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + 60) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:smoke",
            "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0",
        })

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rid = self.server.request_id
        kind = {f"{PREFIX}/invocation/{rid}/response": "response",
                f"{PREFIX}/invocation/{rid}/error": "error",
                f"{PREFIX}/init/error": "init-error"}.get(self.path)
        if kind is None:
            return self._reply(404)
        self._reply(202)
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        self.server.result = (kind, parsed)
        self.server.done.set()


def smoke(name, path):
    event, ok = CASES[name]
    server = RuntimeApi(event)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"PATH": "/usr/bin:/bin", **FUNCTION_ENV,
           "AWS_LAMBDA_FUNCTION_NAME": f"smoke-{name}",
           "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}"}
    proc = subprocess.Popen([path], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    # Done when the bootstrap answers, or exits (a crash at start-up), or the time runs out.
    threading.Thread(target=lambda: (proc.wait(), server.done.set()), daemon=True).start()
    server.done.wait(TIMEOUT_S)
    exited = proc.poll()
    if exited is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    server.shutdown()
    server.server_close()

    result = server.result
    if result and result[0] == "response" and isinstance(result[1], dict) and ok(result[1]):
        print(f"smoke: {name}: OK ({path}): answered {json.dumps(result[1])[:120]}")
        return True
    why = (f"posted {result[0]}: {json.dumps(result[1])[:400]}" if result
           else f"exited with {exited} before answering" if exited is not None
           else f"no answer within {TIMEOUT_S:.0f} s")
    print(f"smoke: {name}: FAILED ({path}): {why}", file=sys.stderr)
    sys.stderr.write("".join(line.decode("utf-8", "replace") for line in out[-20:]))
    return False


def main(argv):
    pairs = [a.split("=", 1) for a in argv[1:]]
    if not pairs or any(len(p) != 2 or p[0] not in CASES for p in pairs):
        print(__doc__.strip().splitlines()[-1], f"(NAME one of {', '.join(CASES)})", file=sys.stderr)
        return 2
    results = [smoke(name, path) for name, path in pairs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
