#!/usr/bin/env python3
"""Smoke-check a provisioned local stack (run with the LocalStack venv's python after
`PPRL_EMULATORS_ONLY=1 localstack/up.sh`; do not run it while the local runner consumes the
ingest queue, it would race the fan-out for the event).

1. S3 -> SQS: a put under `incoming/` in the work bucket arrives on the ingest queue (an
   s3:TestEvent is skipped); a put outside `incoming/` does not.
2. SeaweedFS STS: AssumeRole on the upload role with a session policy limited to
   `<upload bucket>/p1/0/*`: put there is allowed; put elsewhere, get and list are denied.
3. DynamoDB Local: the table exists with the template's keys, GSI and TTL, and a conditional put
   behaves (second attribute_not_exists put fails).
Exit 0 if all pass.
"""

import json
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provision  # noqa: E402

CFG = Config(retries={"max_attempts": 2}, proxies={}, s3={"addressing_style": "path"})
FAILED = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}: {name}{' -- ' + detail if detail else ''}")
    if not ok:
        FAILED.append(name)


def env_of(fn):
    out = {}
    for line in (provision.STATE / "env" / f"{fn}.env").read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def client(service, endpoint, key="test", secret="test", token=None):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", config=CFG,
                        aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token)


def s3_to_sqs(env, ingest_url):
    s3 = client("s3", env["AWS_ENDPOINT_URL_S3"])
    sqs = client("sqs", env["AWS_ENDPOINT_URL_SQS"])
    bucket = env["WORK_BUCKET"]
    tag = uuid.uuid4().hex[:8]
    inside, outside = f"incoming/smoke/{tag}.bin", f"work/smoke/{tag}.bin"
    s3.put_object(Bucket=bucket, Key=outside, Body=b"x")
    s3.put_object(Bucket=bucket, Key=inside, Body=b"hello")
    seen, deadline = [], time.time() + 20
    while time.time() < deadline and inside not in seen:
        for m in sqs.receive_message(QueueUrl=ingest_url, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", []):
            body = json.loads(m["Body"])
            if body.get("Event") == "s3:TestEvent":
                sqs.delete_message(QueueUrl=ingest_url, ReceiptHandle=m["ReceiptHandle"])
                continue
            for rec in body.get("Records", []):
                key = urllib.parse.unquote_plus(rec["s3"]["object"]["key"])
                if tag in key:
                    seen.append(key)
                    sqs.delete_message(QueueUrl=ingest_url, ReceiptHandle=m["ReceiptHandle"])
                    check("event record names the work bucket", rec["s3"]["bucket"]["name"] == bucket)
                    check("event name is ObjectCreated:*", rec["eventName"].startswith("ObjectCreated:"), rec["eventName"])
    check("put under incoming/ -> message on the ingest queue", inside in seen, f"seen {seen}")
    check("put under work/ -> no message", outside not in seen)
    s3.delete_object(Bucket=bucket, Key=inside)
    s3.delete_object(Bucket=bucket, Key=outside)


def denied(fn):
    try:
        fn()
        return False
    except ClientError as e:
        return e.response["Error"]["Code"] in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                                               "InvalidToken", "SignatureDoesNotMatch", "ExpiredToken")


def seaweedfs_sts(env):
    bucket = env["UPLOAD_BUCKET"]
    sts = client("sts", env["UPLOAD_STS_ENDPOINT"], env["UPLOAD_S3_ACCESS_KEY_ID"], env["UPLOAD_S3_SECRET_ACCESS_KEY"])
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/p1/0/*"}]}
    creds = sts.assume_role(RoleArn=env["UPLOAD_ROLE_ARN"], RoleSessionName="smoke-p1-0",
                            Policy=json.dumps(policy), DurationSeconds=int(env["UPLOAD_CREDENTIALS_TTL_SECS"]))["Credentials"]
    up = client("s3", env["UPLOAD_S3_ENDPOINT"], creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    try:
        up.put_object(Bucket=bucket, Key="p1/0/encodings.bin", Body=b"abc")
        check("scoped creds: put in p1/0/ allowed", True)
    except ClientError as e:
        check("scoped creds: put in p1/0/ allowed", False, str(e))
    check("scoped creds: put in p1/1/ denied", denied(lambda: up.put_object(Bucket=bucket, Key="p1/1/x", Body=b"x")))
    check("scoped creds: put in p2/0/ denied", denied(lambda: up.put_object(Bucket=bucket, Key="p2/0/x", Body=b"x")))
    check("scoped creds: get denied", denied(lambda: up.get_object(Bucket=bucket, Key="p1/0/encodings.bin")))
    check("scoped creds: list denied", denied(lambda: up.list_objects_v2(Bucket=bucket, Prefix="p1/")))
    bad = client("s3", env["UPLOAD_S3_ENDPOINT"], creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"][:-4] + "AAAA")
    check("corrupted session token denied", denied(lambda: bad.put_object(Bucket=bucket, Key="p1/0/y", Body=b"y")))
    # Like AWS role chaining (the api's role assumes UploadRole): sessions are capped at 3600 s.
    try:
        sts.assume_role(RoleArn=env["UPLOAD_ROLE_ARN"], RoleSessionName="smoke-long", Policy=json.dumps(policy),
                        DurationSeconds=43200)
        check("AssumeRole for 43200 s rejected (max session 3600 s)", False)
    except ClientError as e:
        check("AssumeRole for 43200 s rejected (max session 3600 s)", True, e.response["Error"]["Code"])
    admin = client("s3", env["UPLOAD_S3_ENDPOINT"], env["UPLOAD_S3_ACCESS_KEY_ID"], env["UPLOAD_S3_SECRET_ACCESS_KEY"])
    check("admin reads the upload back", admin.get_object(Bucket=bucket, Key="p1/0/encodings.bin")["Body"].read() == b"abc")
    admin.delete_object(Bucket=bucket, Key="p1/0/encodings.bin")


def dynamodb(env, plan):
    ddb = client("dynamodb", env["AWS_ENDPOINT_URL_DYNAMODB"])
    t = ddb.describe_table(TableName=env["TABLE_NAME"])["Table"]
    want = plan["table"]["create"]
    check("table key schema = template", t["KeySchema"] == want["KeySchema"])
    check("table GSIs = template", [g["IndexName"] for g in t.get("GlobalSecondaryIndexes", [])]
          == [g["IndexName"] for g in want["GlobalSecondaryIndexes"]])
    ttl = ddb.describe_time_to_live(TableName=env["TABLE_NAME"])["TimeToLiveDescription"]
    check("TTL attribute = template", ttl.get("AttributeName") == plan["table"]["ttl_attribute"], str(ttl))
    item = {"pk": {"S": f"smoke#{uuid.uuid4()}"}, "sk": {"S": "x"}}
    ddb.put_item(TableName=env["TABLE_NAME"], Item=item, ConditionExpression="attribute_not_exists(pk)")
    try:
        ddb.put_item(TableName=env["TABLE_NAME"], Item=item, ConditionExpression="attribute_not_exists(pk)")
        check("conditional put rejects a duplicate", False)
    except ddb.exceptions.ConditionalCheckFailedException:
        check("conditional put rejects a duplicate", True)
    ddb.delete_item(TableName=env["TABLE_NAME"], Key=item)


def main():
    plan, _ = provision.build_plan()
    runner = json.loads((provision.STATE / "runner.json").read_text())
    ingest = next(e["queue_url"] for f in runner["functions"] for e in f["event_sources"]
                  if e["queue_arn"].endswith(":" + next(q["name"] for q in plan["queues"] if q["logical_id"] == "IngestQueue")))
    s3_to_sqs(env_of("fan-out"), ingest)
    seaweedfs_sts(env_of("api"))
    dynamodb(env_of("api"), plan)
    print("smoke: " + ("OK" if not FAILED else f"FAILED: {FAILED}"))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
