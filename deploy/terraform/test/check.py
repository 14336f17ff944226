"""Reads back, with boto3, what `terraform apply` made (or, with --gone,
that `destroy` removed it): deploy/terraform/test/run calls it."""

import json
import sys

import boto3

gone = "--gone" in sys.argv
outputs = {k: v["value"] for k, v in json.load(open(sys.argv[-1])).items()}
session = boto3.session.Session(
    aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
)
sqs = session.client("sqs")
lam = session.client("lambda")
iam = session.client("iam")
events = session.client("events")

if gone:
    urls = sqs.list_queues().get("QueueUrls", [])
    assert outputs["queue_url"] not in urls, urls
    assert outputs["dead_letter_queue_url"] not in urls, urls
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert outputs["function_name"] not in names, names
    print("destroyed: queues and function gone")
    sys.exit(0)

# The queue and its dead-letter queue.
attributes = sqs.get_queue_attributes(QueueUrl=outputs["queue_url"], AttributeNames=["All"])["Attributes"]
dlq = sqs.get_queue_attributes(QueueUrl=outputs["dead_letter_queue_url"], AttributeNames=["QueueArn"])["Attributes"]
redrive = json.loads(attributes["RedrivePolicy"])
assert redrive["deadLetterTargetArn"] == dlq["QueueArn"], redrive
assert int(redrive["maxReceiveCount"]) == 5, redrive
assert attributes["VisibilityTimeout"] == "360", attributes["VisibilityTimeout"]
print("queue: redrive to", dlq["QueueArn"], "after", redrive["maxReceiveCount"], "receives; visibility 360 s")

# The function and its SQS mapping.
function = lam.get_function(FunctionName=outputs["function_name"])["Configuration"]
assert function["Runtime"] == "provided.al2023", function["Runtime"]
assert function["Handler"] == "bootstrap"
env = function["Environment"]["Variables"]
assert env["SQS_QUEUE_URL"] == outputs["queue_url"] and env["DATABASE_MAX_CONNECTIONS"] == "2", env
mapping = lam.get_event_source_mapping(UUID=outputs["event_source_mapping_uuid"])
assert mapping["EventSourceArn"] == outputs["queue_arn"], mapping
assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], mapping
assert mapping["ScalingConfig"]["MaximumConcurrency"] == 7, mapping
assert mapping["BatchSize"] == 10, mapping
print("mapping: ReportBatchItemFailures, maximum concurrency 7, batch 10")

# The schedule, pointed at the function.
rule = events.describe_rule(Name=f"{outputs['function_name']}-due")
assert rule["ScheduleExpression"] == "rate(1 minute)", rule
targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
assert [t["Arn"] for t in targets] == [function["FunctionArn"]], targets
print("schedule:", rule["ScheduleExpression"], "->", function["FunctionName"])

# The policies: the API may only send; the worker may receive, delete, hide.
def actions(arn):
    policy = iam.get_policy(PolicyArn=arn)["Policy"]
    version = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
    document = version["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    found = set()
    for statement in document["Statement"]:
        assert statement["Resource"] == outputs["queue_arn"], statement
        found.update([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    return found

send = actions(outputs["api_send_policy_arn"])
consume = actions(outputs["worker_consume_policy_arn"])
assert "sqs:SendMessage" in send and not send & {"sqs:ReceiveMessage", "sqs:DeleteMessage"}, send
assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= consume, consume
assert "sqs:SendMessage" not in consume, consume
print("policies: api", sorted(send), "worker", sorted(consume))
