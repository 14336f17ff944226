# The events queue with its dead-letter queue, the IAM policies of the API
# (send) and of the delivery worker (receive, delete, change visibility),
# and mechanica-delivery as a Lambda function: an SQS event source mapping
# reporting partial batch failures, and a schedule for due retries.

resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name}-events-dlq"
  message_retention_seconds = 1209600 # 14 days, the most SQS keeps
}

resource "aws_sqs_queue" "events" {
  name                      = "${var.name}-events"
  message_retention_seconds = 345600 # 4 days
  receive_wait_time_seconds = 20
  # AWS's advice for a Lambda source: six times the function's timeout.
  visibility_timeout_seconds = 6 * var.lambda_timeout_seconds
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters.arn
    maxReceiveCount     = var.max_receive_count
  })
}

# mechanica-api's relay: publishes events.
resource "aws_iam_policy" "api_send" {
  name        = "${var.name}-api-send"
  description = "mechanica-api: publish events to the events queue"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
      Resource = aws_sqs_queue.events.arn
    }]
  })
}

# mechanica-delivery, long-running or on Lambda: consumes events.
resource "aws_iam_policy" "worker_consume" {
  name        = "${var.name}-worker-consume"
  description = "mechanica-delivery: receive, delete and hide events"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect = "Allow"
      Action = [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
      ]
      Resource = aws_sqs_queue.events.arn
    }]
  })
}

resource "aws_iam_role" "delivery" {
  name = "${var.name}-delivery"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "lambda.amazonaws.com" }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "delivery_consume" {
  role       = aws_iam_role.delivery.name
  policy_arn = aws_iam_policy.worker_consume.arn
}

resource "aws_iam_role_policy" "delivery_logs" {
  name = "logs"
  role = aws_iam_role.delivery.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
      Resource = "arn:aws:logs:*:*:*"
    }]
  })
}

resource "aws_lambda_function" "delivery" {
  function_name    = "${var.name}-delivery"
  role             = aws_iam_role.delivery.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  timeout          = var.lambda_timeout_seconds
  memory_size      = var.lambda_memory_mb
  environment {
    variables = merge({
      DATABASE_URL             = var.database_url
      DATABASE_MAX_CONNECTIONS = "2"
      SQS_QUEUE_URL            = aws_sqs_queue.events.url
      LOG_FORMAT               = "json"
    }, var.environment)
  }
}

resource "aws_lambda_event_source_mapping" "events" {
  event_source_arn        = aws_sqs_queue.events.arn
  function_name           = aws_lambda_function.delivery.arn
  batch_size              = var.batch_size
  function_response_types = ["ReportBatchItemFailures"]
  scaling_config {
    maximum_concurrency = var.maximum_concurrency
  }
}

resource "aws_cloudwatch_event_rule" "due" {
  name                = "${var.name}-delivery-due"
  description         = "mechanica-delivery's scheduled pass: due retries, reconciliation, retention"
  schedule_expression = var.schedule_expression
}

resource "aws_cloudwatch_event_target" "due" {
  rule = aws_cloudwatch_event_rule.due.name
  arn  = aws_lambda_function.delivery.arn
}

resource "aws_lambda_permission" "due" {
  statement_id  = "scheduled-pass"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.delivery.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.due.arn
}
