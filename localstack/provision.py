#!/usr/bin/env python3
"""Provision the local stack from infra/template.yaml: the template is the only list of resources.

The template is parsed (CloudFormation short tags included), evaluated with a local context
(stack `pprl`, account 000000000000, region us-east-1, parameter defaults overridden by
`LOCAL_PARAM_<Name>`), and turned into a *plan* (pure data, see `build_plan`). `apply` then creates
what the plan says on the local emulators, all on 127.0.0.1:

- MetaTable          -> DynamoDB Local            :8000  (key schema, attributes, GSIs, TTL)
- *Queue             -> LocalStack SQS            :4566  (visibility timeout, retention, redrive)
- WorkBucket         -> LocalStack S3             :4566  (notification to the ingest queue, lifecycle,
                                                          encryption, public access block)
- UploadBucket       -> SeaweedFS S3              :8333
- UploadRole         -> SeaweedFS STS role        (iam.json, written by `seaweedfs-config` before
                                                   SeaweedFS starts)

Finally it writes `.state/env/<function>.env` (the template's environment variables evaluated
locally, plus local endpoint settings) and `.state/runner.json` (the template's SQS event sources)
for the local runner. Everything is idempotent.

usage:
  provision.py plan                     print the plan as JSON (no network)
  provision.py seaweedfs-config         write .state/seaweedfs/{s3.json,iam.json}; exit 3 if iam.json changed
  provision.py apply                    create everything and write the env/runner files

The boto3 import is lazy, so `plan` and the unit tests need only PyYAML.
"""

import base64
import copy
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
STATE = Path(os.environ.get("PPRL_STATE_DIR", HERE / ".state"))

STACK_NAME = "pprl"
ACCOUNT_ID = "000000000000"
REGION = "us-east-1"

LOCALSTACK = "http://127.0.0.1:4566"
DYNAMODB = "http://127.0.0.1:8000"
SEAWEEDFS = "http://127.0.0.1:8333"
API_BIND = "127.0.0.1:8851"

# ----------------------------------------------------------------------------- template loading

_SHORT_TAGS = {
    "Ref": "Ref", "Condition": "Condition",
    "Sub": "Fn::Sub", "GetAtt": "Fn::GetAtt", "Join": "Fn::Join", "If": "Fn::If",
    "Not": "Fn::Not", "Equals": "Fn::Equals", "And": "Fn::And", "Or": "Fn::Or",
    "Select": "Fn::Select", "Split": "Fn::Split", "FindInMap": "Fn::FindInMap",
    "Base64": "Fn::Base64", "Cidr": "Fn::Cidr", "GetAZs": "Fn::GetAZs",
    "ImportValue": "Fn::ImportValue", "Transform": "Fn::Transform", "ToJsonString": "Fn::ToJsonString",
    "Length": "Fn::Length",
}


class CfnLoader(yaml.SafeLoader):
    """A SafeLoader that turns `!Ref x` into {"Ref": "x"}, `!Sub s` into {"Fn::Sub": s}, ..."""


def _make_constructor(key):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if key == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {key: value}
    return construct


for _tag, _key in _SHORT_TAGS.items():
    CfnLoader.add_constructor("!" + _tag, _make_constructor(_key))


def load_template(path=TEMPLATE):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 (SafeLoader subclass)


# ----------------------------------------------------------------------------- evaluation

class Unresolved(Exception):
    pass


_NO_VALUE = object()


class Context:
    """What intrinsic functions evaluate against: pseudo parameters, parameters, conditions, and
    the local value of each resource's Ref / GetAtt."""

    def __init__(self, template, overrides=None, stack_name=STACK_NAME):
        self.template = template
        self.pseudo = {
            "AWS::StackName": stack_name, "AWS::AccountId": ACCOUNT_ID, "AWS::Region": REGION,
            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{stack_name}/local",
        }
        env = os.environ if overrides is None else overrides
        self.params = {}
        for name, spec in (template.get("Parameters") or {}).items():
            value = env.get(f"LOCAL_PARAM_{name}", spec.get("Default"))
            if value is None:
                raise SystemExit(f"parameter {name} has no default: set LOCAL_PARAM_{name}")
            value = str(value)
            allowed = spec.get("AllowedValues")
            if allowed and value not in [str(a) for a in allowed]:
                raise SystemExit(f"LOCAL_PARAM_{name}={value} is not one of {allowed}")
            if spec.get("Type") == "Number":
                float(value)  # must parse
                for bound, ok in (("MinValue", lambda b: float(value) >= b), ("MaxValue", lambda b: float(value) <= b)):
                    if bound in spec and not ok(float(spec[bound])):
                        raise SystemExit(f"LOCAL_PARAM_{name}={value} violates {bound} {spec[bound]}")
            self.params[name] = value
        self.refs = {}    # logical id -> Ref value
        self.attrs = {}   # (logical id, attribute) -> value
        self._conditions = {}

    def condition(self, name):
        if name not in self._conditions:
            self._conditions[name] = bool(self.eval(self.template["Conditions"][name]))
        return self._conditions[name]

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.params:
            return self.params[name]
        if name in self.refs:
            return self.refs[name]
        raise Unresolved(f"Ref {name}")

    def getatt(self, name, attr):
        if (name, attr) in self.attrs:
            return self.attrs[(name, attr)]
        raise Unresolved(f"GetAtt {name}.{attr}")

    def eval(self, node):
        value = self._eval(node)
        return None if value is _NO_VALUE else value

    def _eval(self, node):
        if isinstance(node, list):
            return [v for v in (self._eval(x) for x in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(name, attr)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return str(self._eval(sep)).join(str(x) for x in self._eval(items))
            if key == "Fn::If":
                cond, yes, no = arg
                return self._eval(yes if self.condition(cond) else no)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                a, b = (self._eval(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self._eval(arg[0])
            if key == "Fn::And":
                return all(self._eval(x) for x in arg)
            if key == "Fn::Or":
                return any(self._eval(x) for x in arg)
            if key == "Fn::Select":
                index, items = arg
                return self._eval(items)[int(self._eval(index))]
            if key == "Fn::Split":
                sep, s = arg
                return str(self._eval(s)).split(sep)
            if key == "Fn::Base64":
                return base64.b64encode(str(self._eval(arg)).encode()).decode()
            if key.startswith("Fn::"):
                raise Unresolved(f"{key} is not supported locally")
        out = {}
        for k, v in node.items():
            v = self._eval(v)
            if v is not _NO_VALUE:
                out[k] = v
        return out

    def _sub(self, arg):
        if isinstance(arg, list):
            text, variables = arg
            variables = {k: self._eval(v) for k, v in variables.items()}
        else:
            text, variables = arg, {}

        def replace(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                res, attr = name.split(".", 1)
                return str(self.getatt(res, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


# ----------------------------------------------------------------------------- plan (pure)

def _resources_of(template, type_):
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def _merge_globals(defaults, props):
    """SAM Globals semantics for what we use: maps merge (function wins), everything else is
    replaced by the function's value."""
    out = copy.deepcopy(defaults)
    for k, v in props.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_globals(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def local_queue_name(lid, props, ctx):
    if "QueueName" in props:
        return ctx.eval(props["QueueName"])
    return f"{ctx.pseudo['AWS::StackName']}-{lid}"


def local_queue_arn(name):
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def local_table_name(lid, props, ctx):
    if "TableName" in props:
        return ctx.eval(props["TableName"])
    return f"{ctx.pseudo['AWS::StackName']}-{lid}"


def local_role_name(lid, props, ctx):
    if "RoleName" in props:
        return ctx.eval(props["RoleName"])
    return f"{ctx.pseudo['AWS::StackName']}-{lid}"


_QUEUE_ATTRIBUTES = {
    # CFN property -> SQS attribute (value passed through str())
    "VisibilityTimeout": "VisibilityTimeout",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "DelaySeconds": "DelaySeconds",
    "MaximumMessageSize": "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
    "FifoQueue": "FifoQueue",
    "ContentBasedDeduplication": "ContentBasedDeduplication",
}


def build_plan(template=None, ctx=None):
    """Everything `apply` would create, derived from the template only. Values that depend on
    LocalStack (queue URLs) are filled in by `apply`; queue ARNs are LocalStack's deterministic
    `arn:aws:sqs:<region>:<account>:<name>`."""
    template = template if template is not None else load_template()
    ctx = ctx or Context(template)
    res = template["Resources"]

    # Names first: they are what Ref/GetAtt resolve to locally.
    queues = {}
    for lid, r in _resources_of(template, "AWS::SQS::Queue").items():
        props = r.get("Properties", {})
        name = local_queue_name(lid, props, ctx)
        ctx.attrs[(lid, "Arn")] = local_queue_arn(name)
        ctx.attrs[(lid, "QueueName")] = name
        ctx.refs[lid] = f"{LOCALSTACK}/queue/{REGION}/{ACCOUNT_ID}/{name}"  # replaced by the real URL in apply
        queues[lid] = (name, props)
    tables = _resources_of(template, "AWS::DynamoDB::Table")
    for lid, r in tables.items():
        name = local_table_name(lid, r.get("Properties", {}), ctx)
        ctx.refs[lid] = name
        ctx.attrs[(lid, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"
    for lid, r in _resources_of(template, "AWS::S3::Bucket").items():
        name = ctx.eval(r["Properties"]["BucketName"])
        ctx.refs[lid] = name
        ctx.attrs[(lid, "Arn")] = f"arn:aws:s3:::{name}"
    for lid, r in _resources_of(template, "AWS::IAM::Role").items():
        name = local_role_name(lid, r.get("Properties", {}), ctx)
        ctx.refs[lid] = name
        ctx.attrs[(lid, "Arn")] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    for lid, r in _resources_of(template, "AWS::Logs::LogGroup").items():
        ctx.refs[lid] = ctx.eval(r["Properties"].get("LogGroupName", lid))

    plan = {"stack_name": ctx.pseudo["AWS::StackName"], "region": REGION, "account_id": ACCOUNT_ID,
            "parameters": dict(ctx.params)}

    # --- DynamoDB
    assert len(tables) == 1, "the local stack expects exactly one DynamoDB table"
    (table_lid, table), = tables.items()
    tp = ctx.eval(table["Properties"])
    create = {
        "TableName": ctx.refs[table_lid],
        "AttributeDefinitions": tp["AttributeDefinitions"],
        "KeySchema": tp["KeySchema"],
        "BillingMode": tp.get("BillingMode", "PROVISIONED"),
    }
    if tp.get("GlobalSecondaryIndexes"):
        create["GlobalSecondaryIndexes"] = [
            {k: v for k, v in g.items() if k in ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput")}
            for g in tp["GlobalSecondaryIndexes"]
        ]
    if tp.get("LocalSecondaryIndexes"):
        create["LocalSecondaryIndexes"] = tp["LocalSecondaryIndexes"]
    if create["BillingMode"] != "PAY_PER_REQUEST":
        create["ProvisionedThroughput"] = tp["ProvisionedThroughput"]
    ttl = tp.get("TimeToLiveSpecification") or {}
    plan["table"] = {"logical_id": table_lid, "create": create,
                     "ttl_attribute": ttl.get("AttributeName") if ttl.get("Enabled") else None}

    # --- SQS (dead-letter targets first)
    plan_queues = []
    for lid, (name, props) in queues.items():
        props = ctx.eval(props)
        attributes = {}
        for prop, value in props.items():
            if prop == "RedrivePolicy":
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": value["deadLetterTargetArn"],
                     "maxReceiveCount": int(value["maxReceiveCount"])}, sort_keys=True)
            elif prop in _QUEUE_ATTRIBUTES:
                v = value
                attributes[_QUEUE_ATTRIBUTES[prop]] = str(v).lower() if isinstance(v, bool) else str(v)
            elif prop in ("QueueName", "Tags"):
                pass
            else:
                raise SystemExit(f"{lid}: queue property {prop} is not handled by provision.py")
        redrive = props.get("RedrivePolicy")
        dlq_lid = None
        if redrive:
            dlq_lid = next(q for q, (n, _) in queues.items() if local_queue_arn(n) == redrive["deadLetterTargetArn"])
        plan_queues.append({"logical_id": lid, "name": name, "arn": local_queue_arn(name),
                            "attributes": attributes, "dead_letter_logical_id": dlq_lid})
    plan_queues.sort(key=lambda q: (q["dead_letter_logical_id"] is not None, q["logical_id"]))
    plan["queues"] = plan_queues

    # --- S3 buckets: the one with notifications goes to LocalStack (S3 events), the other one
    # to SeaweedFS (STS-enforced uploads).
    buckets = []
    for lid, r in _resources_of(template, "AWS::S3::Bucket").items():
        props = ctx.eval(r["Properties"])
        notifications = []
        for qc in (props.get("NotificationConfiguration") or {}).get("QueueConfigurations", []):
            rules = ((qc.get("Filter") or {}).get("S3Key") or {}).get("Rules", [])
            queue_lid = next(q["logical_id"] for q in plan_queues if q["arn"] == qc["Queue"])
            notifications.append({"queue_logical_id": queue_lid, "queue_arn": qc["Queue"], "events": [qc["Event"]],
                                  "filter_rules": [{"Name": x["Name"], "Value": x["Value"]} for x in rules]})
        if (props.get("NotificationConfiguration") or {}).keys() - {"QueueConfigurations"}:
            raise SystemExit(f"{lid}: only QueueConfigurations notifications are provisioned locally")
        buckets.append({
            "logical_id": lid, "name": props["BucketName"],
            "endpoint": "localstack" if notifications else "seaweedfs",
            "notifications": notifications,
            "lifecycle_rules": (props.get("LifecycleConfiguration") or {}).get("Rules", []),
            "encryption": props.get("BucketEncryption"),
            "public_access_block": props.get("PublicAccessBlockConfiguration"),
        })
    plan["buckets"] = buckets

    # --- the upload role -> a SeaweedFS STS role with the same permissions
    roles = []
    for lid, r in _resources_of(template, "AWS::IAM::Role").items():
        props = r["Properties"]
        trust = props["AssumeRolePolicyDocument"]["Statement"]
        if any("Service" in (s.get("Principal") or {}) for s in trust):
            continue  # Lambda execution roles: nothing enforces IAM locally
        statements = []
        for pol in props.get("Policies", []):
            for st in ctx.eval(pol["PolicyDocument"])["Statement"]:
                statements.append({k: st[k] for k in ("Effect", "Action", "Resource") if k in st})
        # Only SeaweedFS's STS enforces roles locally; a role on the working bucket (ResultsRole)
        # is assumed through LocalStack's STS, which checks nothing.
        seaweed_buckets = [b["name"] for b in buckets if b["endpoint"] == "seaweedfs"]
        resources = json.dumps([st.get("Resource") for st in statements])
        if not any(f":::{name}/" in resources or f':::{name}"' in resources for name in seaweed_buckets):
            continue
        roles.append({"logical_id": lid, "name": ctx.refs[lid], "arn": ctx.attrs[(lid, "Arn")],
                      "max_session_seconds": int(props.get("MaxSessionDuration", 3600)),
                      "statements": statements})
    plan["sts_roles"] = roles

    # --- functions
    gfun = ((template.get("Globals") or {}).get("Function")) or {}
    functions = []
    for lid, r in _resources_of(template, "AWS::Serverless::Function").items():
        props = _merge_globals(gfun, r.get("Properties", {}))
        name = os.path.basename(os.path.normpath(props["CodeUri"]))
        env_raw = ((props.get("Environment") or {}).get("Variables")) or {}
        events = []
        schedules = []
        for ename, ev in (props.get("Events") or {}).items():
            if ev["Type"] == "Schedule":
                schedules.append({"event": ename, "every_secs": rate_seconds(ctx.eval(ev["Properties"]["Schedule"]))})
                continue
            if ev["Type"] != "SQS":
                continue
            ep = ctx.eval(ev["Properties"])
            queue = next(q for q in plan_queues if q["arn"] == ep["Queue"])
            events.append({"event": ename, "queue_logical_id": queue["logical_id"], "queue_arn": queue["arn"],
                           "batch_size": int(ep.get("BatchSize", 10)),
                           "report_batch_item_failures": "ReportBatchItemFailures" in ep.get("FunctionResponseTypes", [])})
        functions.append({
            "logical_id": lid, "name": name,
            "timeout_secs": int(ctx.eval(props.get("Timeout", 3))),
            "memory_mb": int(ctx.eval(props.get("MemorySize", 128))),
            "env_template": env_raw,
            "http_api": any(ev["Type"] == "HttpApi" for ev in (props.get("Events") or {}).values()),
            "event_sources": events,
            "schedules": schedules,
        })
    plan["functions"] = functions
    return plan, ctx


def rate_seconds(expression):
    """Seconds between runs of an EventBridge `rate(N unit)` schedule. Locally `second(s)` is
    accepted too, so the watchdog can run every few seconds."""
    m = re.fullmatch(r"\s*rate\(\s*(\d+)\s+(second|seconds|minute|minutes|hour|hours|day|days)\s*\)\s*", str(expression))
    if not m or int(m.group(1)) < 1:
        raise SystemExit(f"unsupported schedule expression {expression!r}: expected rate(N minutes|hours|days|seconds)")
    unit = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(2).rstrip("s")]
    return int(m.group(1)) * unit


def function_env(fn, ctx, local):
    env = {k: str(ctx.eval(v)) for k, v in fn["env_template"].items()}
    env.update(local)
    return env


def local_settings(admin, environ=os.environ):
    # LOCAL_S3_ENDPOINT puts something between the functions and LocalStack's S3 (the work
    # bucket): the e2e tests' fault-injecting proxy (tests/e2e/purge_faults.rs). Loopback only.
    work_s3 = environ.get("LOCAL_S3_ENDPOINT") or LOCALSTACK
    if not re.fullmatch(r"http://127\.0\.0\.1:\d{1,5}", work_s3):
        raise SystemExit(f"LOCAL_S3_ENDPOINT must be http://127.0.0.1:<port>, got {work_s3!r}")
    return {
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ENDPOINT_URL_DYNAMODB": DYNAMODB,
        "AWS_ENDPOINT_URL_SQS": LOCALSTACK,
        "AWS_ENDPOINT_URL_S3": work_s3,
        "AWS_ENDPOINT_URL_STS": LOCALSTACK,
        "S3_FORCE_PATH_STYLE": "true",
        "UPLOAD_S3_ENDPOINT": SEAWEEDFS,
        "UPLOAD_S3_ACCESS_KEY_ID": admin["accessKey"],
        "UPLOAD_S3_SECRET_ACCESS_KEY": admin["secretKey"],
        "UPLOAD_STS_ENDPOINT": SEAWEEDFS,
        "UPLOAD_PUBLIC_ENDPOINT": SEAWEEDFS.split("://", 1)[1],
        "UPLOAD_PUBLIC_SECURE": "false",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# ----------------------------------------------------------------------------- SeaweedFS config

def seaweedfs_admin(state=STATE):
    path = state / "seaweedfs" / "admin.json"
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    admin = {"accessKey": "pprladmin" + secrets.token_hex(4), "secretKey": secrets.token_urlsafe(30)}
    path.write_text(json.dumps(admin))
    path.chmod(0o600)
    return admin


def seaweedfs_configs(plan, admin, signing_key):
    s3 = {"identities": [{"name": "admin", "credentials": [admin],
                          "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    roles, policies = [], []
    for role in plan["sts_roles"]:
        pname = f"{role['name']}-policy"
        roles.append({
            "roleName": role["name"], "roleArn": role["arn"],
            # Locally the caller is the SeaweedFS admin identity (there is no api execution role).
            "trustPolicy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole"]}]},
            "attachedPolicies": [pname],
        })
        policies.append({"name": pname, "document": {"Version": "2012-10-17", "Statement": role["statements"]}})
    longest = max([r["max_session_seconds"] for r in plan["sts_roles"]] or [3600])
    iam = {"sts": {"tokenDuration": "1h", "maxSessionLength": f"{longest}s", "issuer": "seaweedfs-sts",
                   "signingKey": signing_key},
           "policy": {"defaultEffect": "Deny"}, "roles": roles, "policies": policies}
    return s3, iam


def write_seaweedfs_config(plan, state=STATE):
    """Writes s3.json and iam.json; returns True if iam.json/s3.json changed (SeaweedFS reads
    them at start only)."""
    d = state / "seaweedfs"
    d.mkdir(parents=True, exist_ok=True)
    admin = seaweedfs_admin(state)
    key_file = d / "signing.key"
    if not key_file.exists():
        key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        key_file.chmod(0o600)
    s3, iam = seaweedfs_configs(plan, admin, key_file.read_text().strip())
    changed = False
    for name, doc in (("s3.json", s3), ("iam.json", iam)):
        p = d / name
        text = json.dumps(doc, indent=1, sort_keys=True)
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
            p.chmod(0o600)
            changed = True
    return changed


# ----------------------------------------------------------------------------- apply (network)

def _clients(admin):
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                 s3={"addressing_style": "path"}, proxies={})
    common = {"region_name": REGION, "aws_access_key_id": "test", "aws_secret_access_key": "test", "config": cfg}
    return {
        "sqs": boto3.client("sqs", endpoint_url=LOCALSTACK, **common),
        "s3": boto3.client("s3", endpoint_url=LOCALSTACK, **common),
        "ddb": boto3.client("dynamodb", endpoint_url=DYNAMODB, **common),
        "upload_s3": boto3.client("s3", endpoint_url=SEAWEEDFS, region_name=REGION, config=cfg,
                                  aws_access_key_id=admin["accessKey"], aws_secret_access_key=admin["secretKey"]),
    }


def log(msg):
    print(f"provision: {msg}", file=sys.stderr)


def apply_queues(plan, ctx, sqs):
    for q in plan["queues"]:
        try:
            url = sqs.create_queue(QueueName=q["name"], Attributes=q["attributes"])["QueueUrl"]
        except sqs.exceptions.QueueNameExists:
            url = sqs.get_queue_url(QueueName=q["name"])["QueueUrl"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes=q["attributes"])
        got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for k, v in q["attributes"].items():
            if k == "RedrivePolicy":
                ok = json.loads(got.get(k, "{}")) == json.loads(v)
            else:
                ok = str(got.get(k, "")).lower() == v.lower()
            if not ok and k != "SqsManagedSseEnabled":
                raise SystemExit(f"queue {q['name']}: {k} is {got.get(k)!r}, template says {v!r}")
        if got["QueueArn"] != q["arn"]:
            raise SystemExit(f"queue {q['name']}: LocalStack ARN {got['QueueArn']} != expected {q['arn']}")
        ctx.refs[q["logical_id"]] = url
        q["url"] = url
        log(f"queue {q['name']} -> {url}")


def apply_table(plan, ddb):
    t = plan["table"]
    create = t["create"]
    name = create["TableName"]
    try:
        desc = ddb.describe_table(TableName=name)["Table"]
    except ddb.exceptions.ResourceNotFoundException:
        desc = None
    if desc is not None:
        same = (
            sorted(map(json.dumps, desc["KeySchema"])) == sorted(map(json.dumps, create["KeySchema"]))
            and sorted((a["AttributeName"], a["AttributeType"]) for a in desc["AttributeDefinitions"])
            == sorted((a["AttributeName"], a["AttributeType"]) for a in create["AttributeDefinitions"])
            and sorted(g["IndexName"] for g in desc.get("GlobalSecondaryIndexes", []))
            == sorted(g["IndexName"] for g in create.get("GlobalSecondaryIndexes", []))
        )
        if not same:
            log(f"table {name} differs from the template: recreating it (local data is disposable)")
            ddb.delete_table(TableName=name)
            ddb.get_waiter("table_not_exists").wait(TableName=name)
            desc = None
    if desc is None:
        ddb.create_table(**create)
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        log(f"table {name} created")
    else:
        log(f"table {name} exists")
    if t["ttl_attribute"]:
        cur = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if cur.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or cur.get("AttributeName") != t["ttl_attribute"]:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": t["ttl_attribute"]})
            log(f"table {name}: TTL on {t['ttl_attribute']}")


def _lifecycle_rules(rules):
    out = []
    for i, r in enumerate(rules):
        rule = {"ID": r.get("Id", f"rule-{i}"), "Status": r.get("Status", "Enabled"),
                "Filter": {"Prefix": r.get("Prefix", "")}}
        if "ExpirationInDays" in r:
            rule["Expiration"] = {"Days": int(r["ExpirationInDays"])}
        if "AbortIncompleteMultipartUpload" in r:
            rule["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": int(r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
        out.append(rule)
    return out


def _ensure_bucket(s3, name):
    try:
        s3.head_bucket(Bucket=name)
        return False
    except s3.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        s3.create_bucket(Bucket=name)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    return True


def notification_config(bucket):
    return {"QueueConfigurations": [
        {"Id": f"{n['queue_logical_id']}-{i}", "QueueArn": n["queue_arn"], "Events": n["events"],
         **({"Filter": {"Key": {"FilterRules": n["filter_rules"]}}} if n["filter_rules"] else {})}
        for i, n in enumerate(bucket["notifications"])]}


def apply_buckets(plan, clients):
    for b in plan["buckets"]:
        if b["endpoint"] == "localstack":
            s3 = clients["s3"]
            created = _ensure_bucket(s3, b["name"])
            log(f"bucket {b['name']} on LocalStack {'created' if created else 'exists'}")
            if b["encryption"]:
                s3.put_bucket_encryption(Bucket=b["name"], ServerSideEncryptionConfiguration={"Rules": [
                    {"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"]}
                    for r in b["encryption"]["ServerSideEncryptionConfiguration"]]})
            if b["public_access_block"]:
                s3.put_public_access_block(Bucket=b["name"], PublicAccessBlockConfiguration={
                    k: bool(v) for k, v in b["public_access_block"].items()})
            if b["lifecycle_rules"]:
                s3.put_bucket_lifecycle_configuration(Bucket=b["name"], LifecycleConfiguration={
                    "Rules": _lifecycle_rules(b["lifecycle_rules"])})
            want = notification_config(b)
            have = s3.get_bucket_notification_configuration(Bucket=b["name"])
            have = {"QueueConfigurations": have.get("QueueConfigurations", [])}
            # S3 answers filter rule names capitalised ("Prefix"); the template may write "prefix".
            if json.dumps(have, sort_keys=True).lower() != json.dumps(want, sort_keys=True).lower():
                # S3 (and LocalStack) send an s3:TestEvent to the queue when this is set; consumers skip it.
                s3.put_bucket_notification_configuration(Bucket=b["name"], NotificationConfiguration=want)
                log(f"bucket {b['name']}: notifications -> {[n['queue_arn'] for n in b['notifications']]}")
        else:
            created = _ensure_bucket(clients["upload_s3"], b["name"])
            log(f"bucket {b['name']} on SeaweedFS {'created' if created else 'exists'}")


def _write_env_file(path, env):
    lines = ["# generated by localstack/provision.py from infra/template.yaml; do not edit"]
    for k in sorted(env):
        v = env[k]
        if re.search(r"[\s'\"$`\\#]", v):
            raise SystemExit(f"{k}: value {v!r} needs quoting; refusing to write an ambiguous env file")
        lines.append(f"{k}={v}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)  # holds the SeaweedFS admin secret
    tmp.replace(path)


def write_outputs(plan, ctx, admin, state=STATE):
    envdir = state / "env"
    envdir.mkdir(parents=True, exist_ok=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "/var/tmp/pprl-target")
    if not target.is_absolute():
        target = ROOT / target
    # up.sh's PPRL_PROFILE: the runner starts the debug build unless asked for the release one.
    profile = os.environ.get("PPRL_PROFILE") or "debug"
    if profile not in ("debug", "release"):
        raise SystemExit(f"PPRL_PROFILE must be debug or release, got {profile!r}")
    local = local_settings(admin)
    urls = {q["logical_id"]: q.get("url", ctx.refs[q["logical_id"]]) for q in plan["queues"]}
    runner = {"functions": []}
    for fn in plan["functions"]:
        env = function_env(fn, ctx, local)
        _write_env_file(envdir / f"{fn['name']}.env", env)
        if fn["event_sources"] or fn["schedules"]:
            runner["functions"].append({
                "name": fn["name"],
                "binary": str(target / profile / fn["name"]),
                "env": env,
                "timeout_secs": fn["timeout_secs"],
                "memory_mb": fn["memory_mb"],
                "event_sources": [{"queue_url": urls[e["queue_logical_id"]], "queue_arn": e["queue_arn"],
                                   "batch_size": e["batch_size"],
                                   "report_batch_item_failures": e["report_batch_item_failures"]}
                                  for e in fn["event_sources"]],
                "schedules": [{"name": sc["event"], "every_secs": sc["every_secs"]} for sc in fn["schedules"]],
            })
    tmp = state / "runner.json.tmp"
    tmp.write_text(json.dumps(runner, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(state / "runner.json")
    log(f"wrote {envdir}/*.env and {state / 'runner.json'}")


def apply(state=STATE):
    t0 = time.time()
    plan, ctx = build_plan()
    admin = seaweedfs_admin(state)
    if write_seaweedfs_config(plan, state):
        log("warning: SeaweedFS config changed; restart SeaweedFS (down.sh && up.sh) to load it")
    clients = _clients(admin)
    apply_queues(plan, ctx, clients["sqs"])
    apply_table(plan, clients["ddb"])
    apply_buckets(plan, clients)
    write_outputs(plan, ctx, admin, state)
    log(f"done in {time.time() - t0:.1f}s")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else "apply"
    if cmd == "plan":
        plan, _ = build_plan()
        json.dump(plan, sys.stdout, indent=1, default=str)
        print()
    elif cmd == "seaweedfs-config":
        plan, _ = build_plan()
        return 3 if write_seaweedfs_config(plan) else 0
    elif cmd == "apply":
        apply()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
