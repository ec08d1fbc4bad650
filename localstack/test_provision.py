#!/usr/bin/env python3
"""The local stack cannot drift from infra/template.yaml: everything provision.py would create
is compared here with the template, read independently (a tag-agnostic YAML reading, not
provision.py's evaluator). Runs without the stack and without boto3:

    python3 -m unittest localstack/test_provision.py     (needs PyYAML, which python3 has here)
"""

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import provision  # noqa: E402

TEMPLATE = HERE.parent / "infra" / "template.yaml"
LOCAL = {"AWS::StackName": "pprl", "AWS::AccountId": "000000000000", "AWS::Region": "us-east-1", "AWS::Partition": "aws"}


class _RawLoader(yaml.SafeLoader):
    """Keeps every CloudFormation tag as ("!Tag", value): no evaluation at all."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return ("!" + suffix, value)


_RawLoader.add_multi_constructor("!", _tagged)


def raw_template():
    with open(TEMPLATE, encoding="utf-8") as f:
        return yaml.load(f, Loader=_RawLoader)  # noqa: S506


def sub_pseudo(tagged):
    """A `!Sub` that names only pseudo parameters, evaluated with the local values."""
    tag, text = tagged
    assert tag == "!Sub", tagged
    for k, v in LOCAL.items():
        text = text.replace("${%s}" % k, v)
    assert "${" not in text, text
    return text


def getatt_target(tagged):
    tag, value = tagged
    assert tag == "!GetAtt", tagged
    return value.split(".")[0]


def param_default(t, value):
    """A literal, or `!Ref Param` resolved to the parameter's default."""
    if isinstance(value, tuple) and value[0] == "!Ref":
        return t["Parameters"][value[1]]["Default"]
    return value


class TemplateDrivesLocalStack(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = raw_template()
        cls.res = cls.t["Resources"]
        cls.plan, cls.ctx = provision.build_plan(provision.load_template(TEMPLATE), provision.Context(provision.load_template(TEMPLATE), overrides={}))

    def of_type(self, type_):
        return {k: v for k, v in self.res.items() if v["Type"] == type_}

    # ------------------------------------------------------------------ SQS
    def test_every_template_queue_is_planned_with_its_settings(self):
        queues = self.of_type("AWS::SQS::Queue")
        planned = {q["logical_id"]: q for q in self.plan["queues"]}
        self.assertEqual(set(queues), set(planned))
        for lid, q in queues.items():
            p, props = planned[lid], q["Properties"]
            self.assertEqual(p["name"], f"pprl-{lid}")
            vt = param_default(self.t, props["VisibilityTimeout"])
            self.assertEqual(p["attributes"]["VisibilityTimeout"], str(vt), lid)
            self.assertLessEqual(int(vt), 43200)
            if "MessageRetentionPeriod" in props:
                self.assertEqual(p["attributes"]["MessageRetentionPeriod"], str(props["MessageRetentionPeriod"]))
            if "RedrivePolicy" in props:
                redrive = json.loads(p["attributes"]["RedrivePolicy"])
                self.assertEqual(redrive["maxReceiveCount"], props["RedrivePolicy"]["maxReceiveCount"], lid)
                dlq = getatt_target(props["RedrivePolicy"]["deadLetterTargetArn"])
                self.assertEqual(p["dead_letter_logical_id"], dlq)
                self.assertEqual(redrive["deadLetterTargetArn"], planned[dlq]["arn"])
            else:
                self.assertNotIn("RedrivePolicy", p["attributes"])

    def test_dead_letter_queues_are_created_before_their_sources(self):
        order = [q["logical_id"] for q in self.plan["queues"]]
        for q in self.plan["queues"]:
            if q["dead_letter_logical_id"]:
                self.assertLess(order.index(q["dead_letter_logical_id"]), order.index(q["logical_id"]))

    def test_expected_redrive_counts(self):
        # The counts the design asks for; also pinned here so a template edit is a conscious one.
        counts = {lid: q["Properties"]["RedrivePolicy"]["maxReceiveCount"]
                  for lid, q in self.of_type("AWS::SQS::Queue").items() if "RedrivePolicy" in q["Properties"]}
        self.assertEqual(counts, {"IngestQueue": 3, "ShardQueue": 5, "SolveQueue": 3})

    # ------------------------------------------------------------------ DynamoDB
    def test_table_matches_template(self):
        (lid, table), = self.of_type("AWS::DynamoDB::Table").items()
        props = table["Properties"]
        create = self.plan["table"]["create"]
        self.assertEqual(create["KeySchema"], props["KeySchema"])
        self.assertEqual(create["AttributeDefinitions"], props["AttributeDefinitions"])
        self.assertEqual(create["BillingMode"], props["BillingMode"])
        self.assertEqual(
            [(g["IndexName"], g["KeySchema"], g["Projection"]) for g in create["GlobalSecondaryIndexes"]],
            [(g["IndexName"], g["KeySchema"], g["Projection"]) for g in props["GlobalSecondaryIndexes"]])
        self.assertEqual(self.plan["table"]["ttl_attribute"], props["TimeToLiveSpecification"]["AttributeName"])
        self.assertEqual(create["TableName"], f"pprl-{lid}")

    # ------------------------------------------------------------------ S3
    def test_buckets_and_work_bucket_notification(self):
        buckets = self.of_type("AWS::S3::Bucket")
        planned = {b["logical_id"]: b for b in self.plan["buckets"]}
        self.assertEqual(set(buckets), set(planned))
        for lid, b in buckets.items():
            self.assertEqual(planned[lid]["name"], sub_pseudo(b["Properties"]["BucketName"]))
            qcs = (b["Properties"].get("NotificationConfiguration") or {}).get("QueueConfigurations", [])
            self.assertEqual(len(planned[lid]["notifications"]), len(qcs))
            # Buckets with notifications need LocalStack (SeaweedFS has none); the others are the
            # STS-enforced upload store.
            self.assertEqual(planned[lid]["endpoint"], "localstack" if qcs else "seaweedfs")
            for n, qc in zip(planned[lid]["notifications"], qcs):
                self.assertEqual(n["events"], [qc["Event"]])
                self.assertEqual(n["queue_logical_id"], getatt_target(qc["Queue"]))
                self.assertEqual(n["filter_rules"], qc["Filter"]["S3Key"]["Rules"])
        work = planned["WorkBucket"]["notifications"][0]
        self.assertEqual(work["filter_rules"], [{"Name": "prefix", "Value": "incoming/"}])
        self.assertEqual(work["queue_logical_id"], "IngestQueue")
        self.assertEqual(provision.notification_config(planned["WorkBucket"])["QueueConfigurations"][0]["QueueArn"],
                         "arn:aws:sqs:us-east-1:000000000000:pprl-IngestQueue")

    def test_lifecycle_rules_translate(self):
        b = next(b for b in self.plan["buckets"] if b["logical_id"] == "WorkBucket")
        rules = provision._lifecycle_rules(b["lifecycle_rules"])
        raw = self.res["WorkBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
        self.assertEqual([r["ID"] for r in rules], [r["Id"] for r in raw])
        self.assertEqual([r["Filter"]["Prefix"] for r in rules], [r.get("Prefix", "") for r in raw])

    # ------------------------------------------------------------------ upload role
    def test_upload_role_becomes_the_seaweedfs_role(self):
        (role,) = self.plan["sts_roles"]
        self.assertEqual(role["logical_id"], "UploadRole")
        raw = self.res["UploadRole"]["Properties"]
        raw_statements = [s for p in raw["Policies"] for s in p["PolicyDocument"]["Statement"]]
        self.assertEqual([s["Action"] for s in role["statements"]], [s["Action"] for s in raw_statements])
        self.assertEqual([s["Resource"] for s in role["statements"]], [sub_pseudo(s["Resource"]) for s in raw_statements])
        self.assertEqual(role["max_session_seconds"], raw.get("MaxSessionDuration", 3600))
        s3, iam = provision.seaweedfs_configs(self.plan, {"accessKey": "a", "secretKey": "s"}, "k")
        self.assertEqual(iam["roles"][0]["roleArn"], role["arn"])
        self.assertEqual(iam["policy"]["defaultEffect"], "Deny")
        self.assertEqual(iam["sts"]["maxSessionLength"], f"{role['max_session_seconds']}s")

    # ------------------------------------------------------------------ functions
    def test_functions_events_and_sizes(self):
        funcs = self.of_type("AWS::Serverless::Function")
        planned = {f["logical_id"]: f for f in self.plan["functions"]}
        self.assertEqual(set(funcs), set(planned))
        self.assertEqual(sorted(f["name"] for f in self.plan["functions"]), ["api", "compare", "fan-out", "solve"])
        for lid, f in funcs.items():
            props, p = f["Properties"], planned[lid]
            self.assertEqual(p["name"], os.path.basename(props["CodeUri"]))
            self.assertEqual(p["timeout_secs"], int(param_default(self.t, props["Timeout"])))
            self.assertEqual(p["memory_mb"], int(param_default(self.t, props["MemorySize"])))
            sqs = {k: e["Properties"] for k, e in (props.get("Events") or {}).items() if e["Type"] == "SQS"}
            self.assertEqual([e["event"] for e in p["event_sources"]], list(sqs))
            for e in p["event_sources"]:
                raw = sqs[e["event"]]
                self.assertEqual(e["queue_logical_id"], getatt_target(raw["Queue"]))
                self.assertEqual(e["batch_size"], raw.get("BatchSize", 10))
                self.assertEqual(e["report_batch_item_failures"], "ReportBatchItemFailures" in raw.get("FunctionResponseTypes", []))
                self.assertTrue(e["report_batch_item_failures"], f"{lid}.{e['event']}: every SQS event reports item failures")
            schedules = {k: e["Properties"] for k, e in (props.get("Events") or {}).items() if e["Type"] == "Schedule"}
            self.assertEqual([sc["event"] for sc in p["schedules"]], list(schedules))
            for sc in p["schedules"]:
                expression = param_default(self.t, schedules[sc["event"]]["Schedule"])
                self.assertEqual(sc["every_secs"], provision.rate_seconds(expression))
            # every consumer's queue keeps a message invisible for at least the function's timeout
            for e in p["event_sources"]:
                vt = param_default(self.t, self.res[e["queue_logical_id"]]["Properties"].get("VisibilityTimeout", 30))
                self.assertGreaterEqual(int(vt), p["timeout_secs"], f"{e['queue_logical_id']} vs {lid}")

    def test_env_files_carry_every_template_variable(self):
        globals_vars = self.t["Globals"]["Function"]["Environment"]["Variables"]
        local = provision.local_settings({"accessKey": "AK", "secretKey": "SK"})
        for lid, f in self.of_type("AWS::Serverless::Function").items():
            fn = next(p for p in self.plan["functions"] if p["logical_id"] == lid)
            own = ((f["Properties"].get("Environment") or {}).get("Variables")) or {}
            env = provision.function_env(fn, self.ctx, local)
            self.assertEqual(set(env), set(globals_vars) | set(own) | set(local), lid)
            self.assertEqual(env["AWS_LAMBDA_LOG_FORMAT"], "JSON")
            self.assertEqual(env["WORK_BUCKET"], sub_pseudo(globals_vars["WORK_BUCKET"]))
            self.assertEqual(env["UPLOAD_BUCKET"], sub_pseudo(globals_vars["UPLOAD_BUCKET"]))
            self.assertEqual(env["TABLE_NAME"], self.plan["table"]["create"]["TableName"])
            self.assertEqual(env["RUST_LOG"], self.t["Parameters"]["LogLevel"]["Default"])
            for k, v in env.items():
                if k.startswith("AWS_ENDPOINT_URL") or k.endswith("_ENDPOINT") or k.endswith("QUEUE_URL"):
                    self.assertTrue(v.startswith("http://127.0.0.1:") or v.startswith("127.0.0.1:"), f"{k}={v}")
        fan_out = next(p for p in self.plan["functions"] if p["name"] == "fan-out")
        fan_out_env = provision.function_env(fan_out, self.ctx, local)
        for var, queue in [("INGEST_DEAD_LETTER_QUEUE_ARN", "IngestDeadLetterQueue"),
                           ("SHARD_DEAD_LETTER_QUEUE_ARN", "ShardDeadLetterQueue"),
                           ("SOLVE_DEAD_LETTER_QUEUE_ARN", "SolveDeadLetterQueue")]:
            self.assertEqual(getatt_target(self.res["FanOutFunction"]["Properties"]["Environment"]["Variables"][var]), queue)
            want = next(q["arn"] for q in self.plan["queues"] if q["logical_id"] == queue)
            self.assertEqual(fan_out_env[var], want, var)
        api = next(p for p in self.plan["functions"] if p["name"] == "api")
        self.assertEqual(provision.function_env(api, self.ctx, local)["UPLOAD_ROLE_ARN"], self.plan["sts_roles"][0]["arn"])

    def test_memory_and_timeout_come_from_globals_when_a_function_has_none(self):
        # The runner enforces these as hard limits: they must be what Lambda would apply.
        tpl = provision.load_template(TEMPLATE)
        solve = tpl["Resources"]["SolveFunction"]["Properties"]
        del solve["MemorySize"], solve["Timeout"]
        plan, _ = provision.build_plan(tpl, provision.Context(tpl, overrides={}))
        self.assertEqual({k: next(p for p in plan["functions"] if p["name"] == "solve")[k]
                          for k in ("memory_mb", "timeout_secs")}, {"memory_mb": 128, "timeout_secs": 3})
        tpl["Globals"]["Function"].update({"MemorySize": 2048, "Timeout": 120})
        plan, _ = provision.build_plan(tpl, provision.Context(tpl, overrides={}))
        by_name = {p["name"]: p for p in plan["functions"]}
        self.assertEqual((by_name["solve"]["memory_mb"], by_name["solve"]["timeout_secs"]), (2048, 120))
        unchanged = next(p for p in self.plan["functions"] if p["name"] == "fan-out")
        self.assertEqual((by_name["fan-out"]["memory_mb"], by_name["fan-out"]["timeout_secs"]),
                         (unchanged["memory_mb"], unchanged["timeout_secs"]), "a function's own values win")

    def test_parameter_overrides(self):
        tpl = provision.load_template(TEMPLATE)
        plan, ctx = provision.build_plan(tpl, provision.Context(tpl, overrides={
            "LOCAL_PARAM_ShardTargetComparisons": "1000", "LOCAL_PARAM_FunctionTimeoutSeconds": "60",
            "LOCAL_PARAM_CompareMemorySize": "4096"}))
        compare = next(p for p in plan["functions"] if p["name"] == "compare")
        self.assertEqual(compare["timeout_secs"], 60)
        self.assertEqual(compare["memory_mb"], 4096)
        self.assertEqual(provision.function_env(compare, ctx, {})["SHARD_TARGET_COMPARISONS"], "1000")
        with self.assertRaises(SystemExit):
            provision.Context(tpl, overrides={"LOCAL_PARAM_LogLevel": "verbose"})
        with self.assertRaises(SystemExit):
            provision.Context(tpl, overrides={"LOCAL_PARAM_FunctionTimeoutSeconds": "901"})

    def test_the_work_bucket_endpoint_can_be_redirected_on_loopback_only(self):
        admin = {"accessKey": "AK", "secretKey": "SK"}
        self.assertEqual(provision.local_settings(admin, {})["AWS_ENDPOINT_URL_S3"], provision.LOCALSTACK)
        proxied = provision.local_settings(admin, {"LOCAL_S3_ENDPOINT": "http://127.0.0.1:40123"})
        self.assertEqual(proxied["AWS_ENDPOINT_URL_S3"], "http://127.0.0.1:40123")
        self.assertEqual(proxied["AWS_ENDPOINT_URL_SQS"], provision.LOCALSTACK, "only S3 goes through it")
        for bad in ("http://example.com:80", "https://127.0.0.1:1", "http://127.0.0.1:1/x"):
            with self.assertRaises(SystemExit):
                provision.local_settings(admin, {"LOCAL_S3_ENDPOINT": bad})

    def test_watchdog_schedule(self):
        fan_out = next(f for f in self.plan["functions"] if f["name"] == "fan-out")
        self.assertEqual(fan_out["schedules"], [{"event": "Watchdog", "every_secs": 300}])
        self.assertEqual(provision.rate_seconds("rate(1 minute)"), 60)
        self.assertEqual(provision.rate_seconds("rate(5 seconds)"), 5)
        self.assertEqual(provision.rate_seconds("rate(2 hours)"), 7200)
        for bad in ("rate(0 minutes)", "cron(0/5 * * * ? *)", "rate(5 fortnights)"):
            with self.assertRaises(SystemExit):
                provision.rate_seconds(bad)

    def test_runner_json_and_env_files(self):
        with tempfile.TemporaryDirectory() as d:
            state = Path(d)
            admin = provision.seaweedfs_admin(state)
            old = os.environ.get("CARGO_TARGET_DIR")
            os.environ["CARGO_TARGET_DIR"] = "/tmp/some-target"
            try:
                provision.write_outputs(self.plan, self.ctx, admin, state)
            finally:
                if old is None:
                    os.environ.pop("CARGO_TARGET_DIR")
                else:
                    os.environ["CARGO_TARGET_DIR"] = old
            runner = json.loads((state / "runner.json").read_text())
            self.assertEqual([f["name"] for f in runner["functions"]], ["fan-out", "compare", "solve"])
            for f in runner["functions"]:
                self.assertEqual(set(f), {"name", "binary", "env", "timeout_secs", "memory_mb", "event_sources", "schedules"})
                self.assertEqual(f["binary"], f"/tmp/some-target/debug/{f['name']}")
                for e in f["event_sources"]:
                    self.assertEqual(set(e), {"queue_url", "queue_arn", "batch_size", "report_batch_item_failures"})
                lines = (state / "env" / f"{f['name']}.env").read_text().splitlines()
                self.assertEqual(dict(x.split("=", 1) for x in lines if x and not x.startswith("#")), f["env"])
            self.assertTrue((state / "env" / "api.env").exists())


if __name__ == "__main__":
    unittest.main()
