"""CI validation of deploy/ecs/stack.yaml: cfn-lint, checkov, and a deployment onto moto.

moto's CloudFormation creates the types it models (KMS, SQS, SNS, IAM, ECS, Logs, Events, EC2
security group) and warns about the others (queue policy, secrets, scheduler, autoscaling, alarms,
SNS subscription), which it skips. The deployment test lets exactly those warnings through and
then checks what was created: the queue and its DLQ, the events rule, the roles and every statement
of their policies (no wildcard action, resources scoped to the stack), the task definitions. The
bucket's EventBridge switch is a custom resource moto cannot run (its Lambda needs Docker), so its
function is run here directly against moto's S3. What moto skips (scaling policy, schedule,
alarms, key and topic policies, the bucket function's role) is asserted on the template itself.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
import yaml

from service.events import parse_message
from service.local.stack import REGION
from service.metrics import NAMESPACE as METRICS_NAMESPACE
from tests.required import skip_unless_required

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "ecs" / "stack.yaml"
PIPELINE_CODE = "IMAGING"
ACCOUNT = "123456789012"  # moto's account

# The template's types moto's CloudFormation does not model: it warns and skips them.
NOT_MODELLED_BY_MOTO = {
    "AWS::SQS::QueuePolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::SecretsManager::Secret",
    "AWS::Scheduler::Schedule",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
}
MOTO_SKIP_WARNING = "Tried to parse {} but it's not supported by moto's CloudFormation implementation"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as their long form."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict[str, Any]:
    """The template as a dict, short tags in their long form."""
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return loaded


def checkov_command() -> str | None:
    """checkov lives in its own venv (its exact pins of boto3 and packaging clash with the project's)."""
    for candidate in (
        os.environ.get("CHECKOV"),
        str(ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("checkov")


# ---------------------------------------------------------------------------------------- linters


def test_template_is_cfn_lint_clean() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_is_checkov_clean_and_every_skip_is_justified_and_used() -> None:
    checkov = checkov_command()
    if checkov is None:
        skip_unless_required(
            "checkov is not installed: scripts/bootstrap test installs it into .venv/tools/checkov"
        )
    result = subprocess.run(
        [
            checkov,
            "--file",
            str(TEMPLATE),
            "--framework",
            "cloudformation",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert not failed, failed
    assert results["passed_checks"], "checkov checked nothing"
    # Every skip in the template carries its reason, and each one still suppresses a real finding.
    declared = {
        (f"{resource['Type']}.{name}", skip["id"]): skip.get("comment", "")
        for name, resource in load_template()["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    assert all(len(comment) > 20 for comment in declared.values()), declared
    skipped = {(c["resource"], c["check_id"]) for c in results["skipped_checks"]}
    assert skipped == set(declared), "a skip in the template no longer matches a check"


# ---------------------------------------------------------------------------------------- moto


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


class MotoSkips:
    """The resource types moto warned it skipped so far (the warnings of an open ``moto_skips``)."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        self._caught = caught

    @property
    def types(self) -> set[str]:
        """The skipped types; any warning that is not moto's "not supported" fails the test."""
        found: set[str] = set()
        for warning in self._caught:
            text = str(warning.message)
            matches = [t for t in NOT_MODELLED_BY_MOTO if text == MOTO_SKIP_WARNING.format(t)]
            assert matches, f"unexpected warning: {text}"
            found.update(matches)
        return found


@contextmanager
def moto_skips() -> Iterator[MotoSkips]:
    """Let moto's "not supported" warnings through and collect them; any other warning fails.

    moto parses the template again on later calls (describe_stacks resolves the outputs), so the
    whole stack's life runs inside. The filters are process-wide, so this covers moto's server
    thread too, where filterwarnings=error would turn the warning into a 500.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skips = MotoSkips(caught)
        yield skips
    assert skips.types <= NOT_MODELLED_BY_MOTO


def _create_stack(endpoint: str, parameters: dict[str, str]) -> dict[str, Any]:
    """Create the stack on moto (inside ``moto_skips``) and describe it."""
    cloudformation = _client(endpoint, "cloudformation")
    name = f"edc-{parameters['Study']}"
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    return stack


@pytest.fixture
def deployed(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """The stack created on moto with the worker on, and what a test needs to inspect it."""
    study = f"t{uuid.uuid4().hex[:8]}"
    ec2 = _client(moto_endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24")["Subnet"]["SubnetId"] for n in (1, 2)]
    source = f"{study}-uploads"
    _client(moto_endpoint, "s3").create_bucket(Bucket=source)
    parameters = {
        "Study": study,
        "PipelineCode": PIPELINE_CODE,
        "WorkerEnabled": "true",
        "SourceBucketName": source,
        "EnableSourceBucketEventBridge": "false",  # the custom resource: tested on its own below
        "DestinationBucketName": f"{study}-labs",
        "ErrorLogBucketName": f"{study}-logs",
        "VpcId": vpc,
        "SubnetIds": ",".join(subnets),
        "ImageTag": "0123abc",
        "DigestEmailFrom": "digest@example.org",
        "DigestEmailTo": "lab@example.org",
        "DestinationBucketKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/lab-key",
    }
    with moto_skips() as skipped:
        stack = _create_stack(moto_endpoint, parameters)
        yield {
            "stack": stack,
            "skipped": skipped,
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
            "prefix": f"edc-{study}-{PIPELINE_CODE}",
            "study": study,
            "subnets": subnets,
            "source": source,
            "endpoint": moto_endpoint,
        }
        _client(moto_endpoint, "cloudformation").delete_stack(StackName=stack["StackName"])


def test_stack_is_created_and_moto_skips_only_the_types_it_does_not_model(deployed: dict[str, Any]) -> None:
    assert deployed["stack"]["StackStatus"] == "CREATE_COMPLETE"
    assert deployed["skipped"].types == NOT_MODELLED_BY_MOTO
    template_types = {r["Type"] for r in load_template()["Resources"].values()}
    assert template_types >= NOT_MODELLED_BY_MOTO


def test_queue_has_the_dlq_with_five_deliveries_and_both_are_encrypted(deployed: dict[str, Any]) -> None:
    sqs = _client(deployed["endpoint"], "sqs")
    prefix = deployed["prefix"]
    queue_url = sqs.get_queue_url(QueueName=prefix)["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=f"{prefix}-dlq")["QueueUrl"]
    # moto answers with its own endpoint in queue URLs; the outputs hold the AWS form.
    assert deployed["outputs"]["QueueUrl"] == f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{prefix}"
    assert (
        deployed["outputs"]["DeadLetterQueueUrl"]
        == f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{prefix}-dlq"
    )
    queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]

    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 5
    # moto ignores RedriveAllowPolicy in a template: the template's, resolved by hand.
    allow = load_template()["Resources"]["DeadLetterQueue"]["Properties"]["RedriveAllowPolicy"]
    (source_arn,) = allow["sourceQueueArns"]
    resolved = source_arn["Fn::Sub"].replace("${AWS::Partition}", "aws").replace("${AWS::Region}", REGION)
    resolved = resolved.replace("${AWS::AccountId}", ACCOUNT).replace("${Study}", deployed["study"])
    assert allow["redrivePermission"] == "byQueue"
    assert resolved.replace("${PipelineCode}", PIPELINE_CODE) == queue["QueueArn"]
    assert int(queue["MessageRetentionPeriod"]) == 4 * 86_400
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 86_400 > int(queue["MessageRetentionPeriod"])
    assert int(queue["VisibilityTimeout"]) == 60
    key_arn = deployed["outputs"]["KeyArn"]
    assert queue["KmsMasterKeyId"] and dlq["KmsMasterKeyId"]
    assert key_arn.endswith(queue["KmsMasterKeyId"]) or queue["KmsMasterKeyId"] == key_arn


def test_uploads_reach_the_queue_through_eventbridge_in_a_shape_the_worker_parses(
    deployed: dict[str, Any],
) -> None:
    endpoint = deployed["endpoint"]
    s3 = _client(endpoint, "s3")
    source = deployed["source"]
    # What the custom resource does on AWS (moto cannot run it): EventBridge delivery on.
    s3.put_bucket_notification_configuration(
        Bucket=source, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    key = "subjecteventcrffile/101/201/CT Scan/v1.dcm"
    s3.put_object(Bucket=source, Key=key, Body=b"DICM")
    s3.put_object(Bucket=source, Key="elsewhere/notes.txt", Body=b"not an upload")  # outside the prefix

    sqs = _client(endpoint, "sqs")
    messages = sqs.receive_message(
        QueueUrl=deployed["outputs"]["QueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    assert len(messages) == 1
    parsed = parse_message(messages[0]["Body"])
    assert [(o.bucket, o.key) for o in parsed.objects] == [(source, key)]


def _inline_policies(iam: Any, role: str) -> dict[str, dict[str, Any]]:
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    documents = {n: iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names}
    # moto's CloudFormation stores an inline policy as the dict's repr, not as JSON.
    return {n: ast.literal_eval(d) if isinstance(d, str) else d for n, d in documents.items()}


def _grants(iam: Any, role: str) -> dict[str, set[str]]:
    """action -> resources, over every Allow statement of the role's inline policies."""
    grants: dict[str, set[str]] = {}
    for document in _inline_policies(iam, role).values():
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            for action in actions:
                grants.setdefault(action, set()).update(resources)
    return grants


def test_roles_hold_only_scoped_grants_without_wildcard_actions(deployed: dict[str, Any]) -> None:
    iam = _client(deployed["endpoint"], "iam")
    prefix = deployed["prefix"]
    study = deployed["study"]
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{prefix}"
    dlq = f"{queue}-dlq"
    admin_topic = deployed["outputs"]["AdminTopicArn"]
    digest_topic = deployed["outputs"]["DigestTopicArn"]
    key = deployed["outputs"]["KeyArn"]
    roles = {
        name: _grants(iam, f"{prefix}-{name}") for name in ("execution", "worker", "digest", "scheduler")
    }

    for role, grants in roles.items():
        for action, resources in grants.items():
            assert "*" not in action, f"{role}: wildcard action {action}"
            if action != "ecr:GetAuthorizationToken":  # takes no resource: "*" is the only value
                assert "*" not in resources, f"{role}: {action} on every resource"

    worker = roles["worker"]
    assert worker["s3:GetObject"] == {
        f"arn:aws:s3:::{study}-uploads/subjecteventcrffile/*",
        f"arn:aws:s3:::{study}-labs/quarantine/*",
    }
    assert worker["s3:PutObject"] == {
        f"arn:aws:s3:::{study}-labs/quarantine/*",
        f"arn:aws:s3:::{study}-logs/image_pipelines/error_logs/*",
    }
    assert worker["s3:ListBucket"] == {f"arn:aws:s3:::{study}-uploads", f"arn:aws:s3:::{study}-labs"}
    assert worker["sqs:ReceiveMessage"] == {queue, dlq}
    assert worker["sqs:DeleteMessage"] == {queue, dlq}
    assert worker["sqs:SendMessage"] == {queue}
    assert worker["sqs:StartMessageMoveTask"] == {dlq}
    assert worker["sns:Publish"] == {admin_topic}
    assert worker["ecs:UpdateTaskProtection"] == {f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{prefix}/*"}
    assert worker["kms:Decrypt"] == {key, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/lab-key"}
    assert not {a for a in worker if a.startswith(("iam:", "secretsmanager:"))}

    digest = roles["digest"]
    assert digest["sns:Publish"] == {digest_topic}
    assert digest["sqs:GetQueueAttributes"] == {queue, dlq}
    assert digest["ses:SendRawEmail"] == {
        f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/digest@example.org",
        f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/example.org",
    }
    assert not {a for a in digest if a.startswith("s3:")}

    execution = roles["execution"]
    assert set(execution) == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
    }
    assert execution["ecr:BatchGetImage"] == {f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/edc-image-pipeline"}
    # moto resolves a Ref to a secret (not modelled) to nothing: the template names the two.
    template_execution = load_template()["Resources"]["ExecutionRole"]["Properties"]["Policies"][0]
    (secrets,) = [
        s for s in template_execution["PolicyDocument"]["Statement"] if s["Sid"] == "DatabaseSecrets"
    ]
    assert secrets["Resource"] == [
        {"Ref": "EdcDatabaseUrlSecret"},
        {"Ref": "PipelineDatabaseUrlSecret"},
        {"Fn::If": ["DigestBySlack", {"Ref": "SlackWebhookUrlSecret"}, {"Ref": "AWS::NoValue"}]},
    ]

    scheduler = roles["scheduler"]
    assert set(scheduler) == {"ecs:RunTask", "iam:PassRole"}
    assert scheduler["ecs:RunTask"] == {deployed["outputs"]["DigestTaskDefinitionArn"]}
    assert scheduler["iam:PassRole"] == {
        f"arn:aws:iam::{ACCOUNT}:role/{prefix}-execution",
        f"arn:aws:iam::{ACCOUNT}:role/{prefix}-digest",
    }


# Every AWS operation the service calls (boto3 method name) -> the role that calls it in the stack
# and the IAM action that authorises it (S3's object calls share a few actions). A new call in
# service/ fails the test below until it is entered here and granted in the template.
CALLS: dict[str, dict[str, tuple[str, str]]] = {
    "s3": {
        "get_object": ("worker", "s3:GetObject"),
        "head_object": ("worker", "s3:GetObject"),
        "put_object": ("worker", "s3:PutObject"),
        "create_multipart_upload": ("worker", "s3:PutObject"),
        "upload_part": ("worker", "s3:PutObject"),
        "upload_part_copy": ("worker", "s3:PutObject"),
        "complete_multipart_upload": ("worker", "s3:PutObject"),
        "abort_multipart_upload": ("worker", "s3:AbortMultipartUpload"),
        "delete_object": ("worker", "s3:DeleteObject"),
        "head_bucket": ("worker", "s3:ListBucket"),
        "list_objects_v2": ("worker", "s3:ListBucket"),
        "list_object_versions": ("worker", "s3:ListBucketVersions"),
        "get_bucket_versioning": ("worker", "s3:GetBucketVersioning"),
    },
    "sqs": {
        "receive_message": ("worker", "sqs:ReceiveMessage"),
        "delete_message_batch": ("worker", "sqs:DeleteMessage"),
        "change_message_visibility_batch": ("worker", "sqs:ChangeMessageVisibility"),
        "send_message": ("worker", "sqs:SendMessage"),
        "send_message_batch": ("worker", "sqs:SendMessage"),
        "get_queue_attributes": ("digest", "sqs:GetQueueAttributes"),
        "start_message_move_task": ("worker", "sqs:StartMessageMoveTask"),
        "list_message_move_tasks": ("worker", "sqs:ListMessageMoveTasks"),
    },
    "sns": {"publish": ("worker", "sns:Publish"), "publish_batch": ("worker", "sns:Publish")},
    "ses": {"send_raw_email": ("digest", "ses:SendRawEmail")},
}
# Method names that are also the service's own (ObjectStore.list_objects), not boto3 calls.
OWN_METHODS = {"list_objects"}


def _aws_calls_in_service() -> dict[str, set[str]]:
    """service -> the boto3 client methods and paginators named in service/ (the local stack's
    demo and fixtures excluded: they never run in the deployed tasks)."""
    sources = [p for p in (ROOT / "service").rglob("*.py") if "local" not in p.relative_to(ROOT).parts]
    text = "\n".join(p.read_text() for p in sources)
    named = set(re.findall(r"\.([a-z][a-z0-9_]*)\(", text)) | set(
        re.findall(r"get_paginator\(\"([a-z0-9_]+)\"\)", text)
    )
    calls = {}
    for service in CALLS:
        methods = boto3.client(service, region_name=REGION).meta.method_to_api_mapping
        calls[service] = {name for name in named if name in methods} - OWN_METHODS
    return calls


def test_every_aws_call_the_service_makes_is_granted_to_the_role_that_makes_it(
    deployed: dict[str, Any],
) -> None:
    iam = _client(deployed["endpoint"], "iam")
    prefix, study = deployed["prefix"], deployed["study"]
    grants = {name: _grants(iam, f"{prefix}-{name}") for name in ("worker", "digest")}
    for service, methods in _aws_calls_in_service().items():
        unknown = methods - set(CALLS[service])
        assert not unknown, f"{service} calls {sorted(unknown)}: enter them in CALLS and grant them"
        for method in methods:
            role, action = CALLS[service][method]
            assert action in grants[role], f"{service}.{method} needs {action} on the {role} role"
    # The two grants the worker's operator commands and its take-back need, scoped as narrowly.
    assert grants["worker"]["s3:GetBucketVersioning"] == {f"arn:aws:s3:::{study}-uploads"}
    assert grants["worker"]["s3:DeleteObject"] == {f"arn:aws:s3:::{study}-labs/quarantine/*"}


def test_task_definitions_run_the_worker_digest_and_migrate_as_the_contract_says(
    deployed: dict[str, Any],
) -> None:
    ecs = _client(deployed["endpoint"], "ecs")
    outputs = deployed["outputs"]

    worker = ecs.describe_task_definition(taskDefinition=outputs["WorkerTaskDefinitionArn"])["taskDefinition"]
    # moto drops the ephemeral storage, and the secrets' ARNs (secrets are not modelled): the template's.
    template_worker = load_template()["Resources"]["WorkerTaskDefinition"]["Properties"]
    assert template_worker["RequiresCompatibilities"] == ["FARGATE"]
    assert template_worker["EphemeralStorage"] == {"SizeInGiB": {"Ref": "EphemeralStorageGiB"}}
    assert [s["ValueFrom"] for s in template_worker["ContainerDefinitions"][0]["Secrets"]] == [
        {"Ref": "EdcDatabaseUrlSecret"},
        {"Ref": "PipelineDatabaseUrlSecret"},
    ]
    (container,) = worker["containerDefinitions"]
    assert container["command"] == ["worker"]
    assert container["stopTimeout"] == 120
    assert container["user"] == "10001"
    assert container["healthCheck"]["command"] == ["CMD", "python", "-m", "service", "health"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["PIPELINE_QUEUE_URL"] == outputs["QueueUrl"]
    assert env["PIPELINE_DLQ_URL"] == outputs["DeadLetterQueueUrl"]
    assert env["ADMIN_TOPIC_ARN"] == outputs["AdminTopicArn"]
    assert env["SHUTDOWN_GRACE_S"] == "90"
    assert {s["name"] for s in container["secrets"]} == {"EDC_DATABASE_URL", "PIPELINE_DATABASE_URL"}
    assert container["logConfiguration"]["options"]["awslogs-group"] == outputs["LogGroupName"]

    digest = ecs.describe_task_definition(taskDefinition=outputs["DigestTaskDefinitionArn"])["taskDefinition"]
    # This stack's pipeline only: its own windows and delivery claims, even in a shared database.
    assert digest["containerDefinitions"][0]["command"] == ["digest", "--pipeline", PIPELINE_CODE]
    digest_env = {e["name"]: e["value"] for e in digest["containerDefinitions"][0]["environment"]}
    assert digest_env["DIGEST_TOPIC_ARN"] == outputs["DigestTopicArn"]

    migrate = ecs.describe_task_definition(taskDefinition=outputs["MigrateTaskDefinitionArn"])[
        "taskDefinition"
    ]
    assert migrate["containerDefinitions"][0]["command"] == ["migrate"]
    assert "taskRoleArn" not in migrate or not migrate["taskRoleArn"]  # it calls no AWS API
    assert [s["name"] for s in migrate["containerDefinitions"][0]["secrets"]] == ["PIPELINE_DATABASE_URL"]

    command = outputs["MigrateCommand"]
    assert command.startswith(f"aws ecs run-task --cluster {outputs['ClusterName']} --launch-type FARGATE")
    assert outputs["MigrateTaskDefinitionArn"] in command
    assert all(subnet in command for subnet in deployed["subnets"])

    (service,) = ecs.describe_services(cluster=outputs["ClusterName"], services=[outputs["ServiceName"]])[
        "services"
    ]
    assert service["desiredCount"] == 1


def test_first_deployment_with_the_worker_off_runs_no_task(moto_endpoint: str) -> None:
    study = f"t{uuid.uuid4().hex[:8]}"
    ec2 = _client(moto_endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    parameters = {
        "Study": study,
        "PipelineCode": PIPELINE_CODE,
        "SourceBucketName": f"{study}-uploads",
        "EnableSourceBucketEventBridge": "false",
        "DestinationBucketName": f"{study}-labs",
        "ErrorLogBucketName": f"{study}-labs",
        "VpcId": vpc,
        "SubnetIds": subnet,
        "ImageTag": "0123abc",
    }
    with moto_skips() as skipped:
        stack = _create_stack(moto_endpoint, parameters)
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        ecs = _client(moto_endpoint, "ecs")
        (service,) = ecs.describe_services(cluster=f"edc-{study}-{PIPELINE_CODE}", services=["worker"])[
            "services"
        ]
        assert service["desiredCount"] == 0
        _client(moto_endpoint, "cloudformation").delete_stack(StackName=stack["StackName"])
    # No scalable target or scaling policy while the worker is off (the secrets are still empty).
    assert skipped.types == NOT_MODELLED_BY_MOTO - {
        "AWS::ApplicationAutoScaling::ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
    }


# ---------------------------------------------------------------------------------------- custom resource


def _bucket_function() -> dict[str, Any]:
    """The custom resource's inline code, loaded as a module namespace."""
    code = load_template()["Resources"]["BucketEventBridgeFunction"]["Properties"]["Code"]["ZipFile"]
    namespace: dict[str, Any] = {"__name__": "bucket_eventbridge"}
    exec(compile(code, "bucket_eventbridge.py", "exec"), namespace)  # noqa: S102 - our own template's code
    return namespace


class _ResponseCatcher(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local stand-in for CloudFormation's pre-signed response URL; yields (url, bodies PUT to it)."""
    bodies: ClassVar[list[dict[str, Any]]] = []
    handler = type("Catcher", (_ResponseCatcher,), {"bodies": bodies})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/response", bodies
    server.shutdown()
    server.server_close()


def _event(request_type: str, bucket: str, url: str) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/edc-t/1",
        "RequestId": "r-1",
        "LogicalResourceId": "SourceBucketEventBridge",
        "ResourceProperties": {"BucketName": bucket},
    }


def test_bucket_function_turns_eventbridge_on_and_keeps_the_bucket_s_other_notifications(
    moto_endpoint: str, response_url: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    function = _bucket_function()
    bucket = f"t{uuid.uuid4().hex[:8]}-uploads"
    s3 = _client(moto_endpoint, "s3")
    sqs = _client(moto_endpoint, "sqs")
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"{bucket}-edc-own")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    edc_own = {"QueueArn": queue_arn, "Events": ["s3:ObjectRemoved:*"]}
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [edc_own]}
    )
    sent: list[dict[str, Any]] = []

    class RecordingS3:
        """moto's S3, with each configuration the function writes recorded (moto's GET omits EventBridge)."""

        def get_bucket_notification_configuration(self, **kwargs: Any) -> Any:
            return s3.get_bucket_notification_configuration(**kwargs)

        def put_bucket_notification_configuration(self, **kwargs: Any) -> Any:
            sent.append(kwargs["NotificationConfiguration"])
            return s3.put_bucket_notification_configuration(**kwargs)

    assert function["enable_eventbridge"](RecordingS3(), bucket) is True
    (written,) = sent
    assert written["EventBridgeConfiguration"] == {}
    assert [(q["QueueArn"], q["Events"]) for q in written["QueueConfigurations"]] == [
        (queue_arn, ["s3:ObjectRemoved:*"])
    ]
    assert (
        s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"][0]["QueueArn"]
        == queue_arn
    )

    # The handler answers CloudFormation: success on create, and a failure it can show on the stack.
    url, bodies = response_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    function["handler"](_event("Create", bucket, url), None)
    function["handler"](_event("Create", "no-such-bucket-here", url), None)
    function["handler"](_event("Delete", bucket, url), None)
    assert [(b["Status"], b["PhysicalResourceId"]) for b in bodies] == [
        ("SUCCESS", f"{bucket}-eventbridge"),
        ("FAILED", "no-such-bucket-here-eventbridge"),
        ("SUCCESS", f"{bucket}-eventbridge"),
    ]
    assert "NoSuchBucket" in bodies[1]["Reason"]
    assert all(
        b["RequestId"] == "r-1" and b["LogicalResourceId"] == "SourceBucketEventBridge" for b in bodies
    )


def test_the_slack_webhook_is_a_secret_only_the_digest_task_receives() -> None:
    """A webhook URL lets anyone post to the channel: a KMS-encrypted secret created only when the
    digest goes to Slack, injected into the digest task alone, never a plain environment value."""
    resources = load_template()["Resources"]
    secret = resources["SlackWebhookUrlSecret"]
    assert secret["Condition"] == "DigestBySlack"
    assert secret["Properties"]["KmsKeyId"] == {"Ref": "Key"}
    digest = resources["DigestTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert {
        "Fn::If": [
            "DigestBySlack",
            {"Name": "SLACK_WEBHOOK_URL", "ValueFrom": {"Ref": "SlackWebhookUrlSecret"}},
            {"Ref": "AWS::NoValue"},
        ]
    } in digest["Secrets"]
    assert all(e["Name"] != "SLACK_WEBHOOK_URL" for e in digest["Environment"])
    for name in ("WorkerTaskDefinition", "MigrateTaskDefinition"):
        container = resources[name]["Properties"]["ContainerDefinitions"][0]
        assert "SlackWebhookUrlSecret" not in json.dumps(container), name


def test_a_failed_digest_task_reaches_the_admins(deployed: dict[str, Any]) -> None:
    """The labs would only notice a missing digest the next morning: a rule on the digest task's
    failed stops (non-zero exit, or never started) publishes to the admin topic, which lets only
    this rule and the stack's alarms publish as services."""
    events = _client(deployed["endpoint"], "events")
    rule = events.describe_rule(Name=deployed["outputs"]["DigestFailedRuleName"])
    pattern = json.loads(rule["EventPattern"])
    assert pattern["source"] == ["aws.ecs"] and pattern["detail-type"] == ["ECS Task State Change"]
    assert pattern["detail"]["group"] == [f"family:{deployed['prefix']}-digest"]
    assert pattern["detail"]["lastStatus"] == ["STOPPED"]
    assert {"containers": {"exitCode": [{"anything-but": 0}]}} in pattern["detail"]["$or"]
    assert {"stopCode": ["TaskFailedToStart"]} in pattern["detail"]["$or"]
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"] == deployed["outputs"]["AdminTopicArn"]
    text = target["InputTransformer"]["InputTemplate"]
    assert "<task>" in text and "<exit>" in text
    assert f"digest --pipeline {PIPELINE_CODE} --retry-failed" in text

    # moto does not model topic policies: the template's.
    resources = load_template()["Resources"]
    statements = resources["AdminTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {s["Principal"]["Service"] for s in statements} == {
        "cloudwatch.amazonaws.com",
        "events.amazonaws.com",
    }
    assert all(s["Action"] == "sns:Publish" and "Condition" in s for s in statements)
    (key_statement,) = [
        s
        for s in resources["Key"]["Properties"]["KeyPolicy"]["Statement"]
        if s["Sid"] == "EventBridgeSendsToTheQueue"
    ]
    rules = key_statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert any("digest-failed" in str(r) for r in rules)


# -------------------------------------------------------------------------------- resources moto skips
# moto skips the scaling policy, the schedule and the alarms, and cfn-lint checks only their
# schema: these read the template itself (the log groups' retention too).


def _metrics_by_id(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["Id"]: m for m in metrics}


def test_scaling_tracks_visible_messages_per_running_task_not_the_total_backlog() -> None:
    resources = load_template()["Resources"]
    policy = resources["BacklogPerTaskScaling"]
    assert policy["Condition"] == "WorkerOn"
    properties = policy["Properties"]
    assert properties["PolicyType"] == "TargetTrackingScaling"
    assert properties["ScalingTargetId"] == {"Ref": "ScalableTarget"}
    config = properties["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == {"Ref": "BacklogPerTaskTarget"}
    assert "PredefinedMetricSpecification" not in config
    spec = config["CustomizedMetricSpecification"]
    # The metric math form only: a plain MetricName here would be the total visible count.
    assert set(spec) == {"Metrics"}, spec
    metrics = _metrics_by_id(spec["Metrics"])
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    assert returned["Expression"].replace(" ", "") == "visible/running"
    assert "MetricStat" not in returned

    visible = metrics["visible"]["MetricStat"]
    assert visible["Metric"]["Namespace"] == "AWS/SQS"
    assert visible["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert visible["Metric"]["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}
    ]
    running = metrics["running"]["MetricStat"]
    assert running["Metric"]["Namespace"] == "ECS/ContainerInsights"
    assert running["Metric"]["MetricName"] == "RunningTaskCount"
    assert running["Metric"]["Dimensions"] == [
        {"Name": "ClusterName", "Value": {"Ref": "Cluster"}},
        {"Name": "ServiceName", "Value": {"Fn::GetAtt": ["WorkerService", "Name"]}},
    ]
    assert not metrics["visible"]["ReturnData"] and not metrics["running"]["ReturnData"]
    # The denominator exists: Container Insights on, and never fewer than one task.
    cluster_settings = resources["Cluster"]["Properties"]["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster_settings
    target = resources["ScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["MinCapacity"] == {"Ref": "MinTasks"}
    assert load_template()["Parameters"]["MinTasks"]["MinValue"] >= 1


def test_the_schedule_runs_the_digest_task_definition_of_this_pipeline_on_fargate() -> None:
    template = load_template()
    resources = template["Resources"]
    schedule = resources["DigestTaskSchedule"]["Properties"]
    assert schedule["ScheduleExpression"] == {"Ref": "DigestSchedule"}
    assert schedule["ScheduleExpressionTimezone"] == {"Ref": "DigestScheduleTimezone"}
    assert schedule["State"] == {"Fn::If": ["WorkerOn", "ENABLED", "DISABLED"]}
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["DigestSchedulerRole", "Arn"]}
    ecs = target["EcsParameters"]
    assert ecs["TaskDefinitionArn"] == {"Ref": "DigestTaskDefinition"}
    (digest,) = resources["DigestTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert digest["Command"] == ["digest", "--pipeline", {"Ref": "PipelineCode"}]
    assert ecs["LaunchType"] == "FARGATE"
    assert ecs["TaskCount"] == 1
    network = ecs["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["Subnets"] == {"Ref": "SubnetIds"}
    assert network["AssignPublicIp"] == "DISABLED"
    assert template["Parameters"]["DigestSchedule"]["Default"].startswith("cron(")


def _alarm(name: str) -> dict[str, Any]:
    alarm: dict[str, Any] = load_template()["Resources"][name]
    assert alarm["Type"] == "AWS::CloudWatch::Alarm"
    properties: dict[str, Any] = alarm["Properties"]
    assert properties["AlarmActions"] == [{"Ref": "AdminTopic"}], name
    assert properties["OKActions"] == [{"Ref": "AdminTopic"}], name
    # Named under the prefix the admin topic's policy lets CloudWatch publish from.
    assert properties["AlarmName"]["Fn::Sub"].startswith("edc-${Study}-${PipelineCode}-"), name
    return properties


def test_dlq_alarm_fires_on_any_message_in_the_dlq() -> None:
    alarm = _alarm("DeadLetterQueueAlarm")
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    ]
    assert alarm["Statistic"] == "Maximum"
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["EvaluationPeriods"] == 1


def test_oldest_message_alarm_fires_on_the_queue_s_age_above_the_parameter() -> None:
    alarm = _alarm("OldestMessageAlarm")
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}]
    assert alarm["Statistic"] == "Maximum"
    assert alarm["Threshold"] == {"Ref": "OldestMessageAlarmSeconds"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_no_completion_alarm_fires_when_messages_wait_and_no_file_completes() -> None:
    alarm = _alarm("NoCompletionAlarm")
    assert "MetricName" not in alarm  # metric math, not one metric
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    metrics = _metrics_by_id(alarm["Metrics"])
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    expression = returned["Expression"].replace(" ", "")
    assert expression == "IF(FILL(visible,0)>0ANDFILL(completed,0)==0,1,0)"
    visible = metrics["visible"]["MetricStat"]
    assert visible["Metric"]["Namespace"] == "AWS/SQS"
    assert visible["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert visible["Metric"]["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}
    ]
    assert visible["Stat"] == "Minimum"  # waiting for the whole window
    completed = metrics["completed"]["MetricStat"]
    # The worker's EMF metric, under the namespace and dimensions service/metrics.py writes.
    assert completed["Metric"]["Namespace"] == METRICS_NAMESPACE
    assert completed["Metric"]["MetricName"] == "FilesCompleted"
    assert completed["Metric"]["Dimensions"] == [
        {"Name": "Study", "Value": {"Ref": "Study"}},
        {"Name": "PipelineCode", "Value": {"Ref": "PipelineCode"}},
    ]
    assert completed["Stat"] == "Sum"
    assert visible["Period"] == completed["Period"] == {"Ref": "NoCompletionAlarmSeconds"}


def test_log_groups_keep_their_logs_for_the_retention_parameter() -> None:
    template = load_template()
    groups = {n: r for n, r in template["Resources"].items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert set(groups) == {"LogGroup", "BucketEventBridgeFunctionLogGroup"}
    for name, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["Key", "Arn"]}, name
    retention = template["Parameters"]["LogRetentionDays"]
    assert retention["Default"] == 731
    assert min(retention["AllowedValues"]) >= 90


def _needed_storage_gib(concurrency: int, max_object_bytes: int) -> float:
    """The template's sizing rule: each job holds about twice its upload in WORK_DIR, plus 10 GiB."""
    return 2 * concurrency * max_object_bytes / 1024**3 + 10


def test_default_ephemeral_storage_holds_the_default_concurrency_of_largest_uploads() -> None:
    """CloudFormation Rules cannot do arithmetic: the sizing rule is checked here, on the defaults
    and on the bounds (the largest allowed upload fits the largest storage at concurrency 1)."""
    parameters = load_template()["Parameters"]
    storage = parameters["EphemeralStorageGiB"]
    concurrency = parameters["WorkerConcurrency"]
    largest = parameters["MaxObjectBytes"]
    assert _needed_storage_gib(concurrency["Default"], largest["Default"]) <= storage["Default"]
    assert storage["MinValue"] <= storage["Default"] <= storage["MaxValue"] == 200  # Fargate's range
    assert _needed_storage_gib(concurrency["MinValue"], largest["MaxValue"]) <= storage["MaxValue"]
    assert "2 x WorkerConcurrency x MaxObjectBytes" in storage["Description"]
    assert "2 x WorkerConcurrency x MaxObjectBytes" in largest["Description"]


def test_key_policy_s_only_wildcard_is_the_root_delegation_and_service_statements_are_conditioned() -> None:
    statements = load_template()["Resources"]["Key"]["Properties"]["KeyPolicy"]["Statement"]
    wildcard = [s for s in statements if "*" in json.dumps(s["Action"])]
    assert [s["Sid"] for s in wildcard] == ["AccountAdministersTheKeyThroughIam"]
    assert wildcard[0]["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    }
    services = [s for s in statements if "Service" in s["Principal"]]
    assert len(services) == 3
    assert all("Condition" in s for s in services), services
    (cloudwatch,) = [s for s in services if s["Principal"]["Service"] == "cloudwatch.amazonaws.com"]
    assert cloudwatch["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    alarms = cloudwatch["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert alarms.endswith(":alarm:edc-${Study}-${PipelineCode}-*")


def test_bucket_eventbridge_function_role_holds_only_the_two_notification_calls_on_the_source_bucket() -> (
    None
):
    """The deployed fixture turns the custom resource off (moto cannot run its Lambda), so its role
    is never created there: the template's statements, exactly."""
    resources = load_template()["Resources"]
    role = resources["BucketEventBridgeFunctionRole"]
    assert role["Condition"] == "TurnOnBucketEventBridge"
    properties = role["Properties"]
    (trust,) = properties["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert "ManagedPolicyArns" not in properties
    (policy,) = properties["Policies"]
    grants = {
        action: statement["Resource"]
        for statement in policy["PolicyDocument"]["Statement"]
        for action in statement["Action"]
        if statement["Effect"] == "Allow"
    }
    assert all(s["Effect"] == "Allow" for s in policy["PolicyDocument"]["Statement"])
    source_bucket = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${SourceBucketName}"}
    own_streams = {"Fn::Sub": "${BucketEventBridgeFunctionLogGroup.Arn}:log-stream:*"}
    # get/put_bucket_notification_configuration, the only S3 calls the function's code makes.
    assert grants == {
        "s3:GetBucketNotification": source_bucket,
        "s3:PutBucketNotification": source_bucket,
        "logs:CreateLogStream": own_streams,
        "logs:PutLogEvents": own_streams,
    }
    code = resources["BucketEventBridgeFunction"]["Properties"]["Code"]["ZipFile"]
    s3_calls = {line.split("s3.", 1)[1].split("(", 1)[0] for line in code.splitlines() if " s3." in line}
    assert s3_calls == {"get_bucket_notification_configuration", "put_bucket_notification_configuration"}
    assert resources["BucketEventBridgeFunction"]["Properties"]["Role"] == {
        "Fn::GetAtt": ["BucketEventBridgeFunctionRole", "Arn"]
    }
