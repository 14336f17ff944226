output "queue_url" {
  description = "SQS_QUEUE_URL for mechanica-api and a long-running mechanica-delivery."
  value       = aws_sqs_queue.events.url
}

output "queue_arn" {
  value = aws_sqs_queue.events.arn
}

output "dead_letter_queue_url" {
  value = aws_sqs_queue.dead_letters.url
}

output "api_send_policy_arn" {
  description = "Attach to mechanica-api's role."
  value       = aws_iam_policy.api_send.arn
}

output "worker_consume_policy_arn" {
  description = "Attach to a long-running mechanica-delivery's role (the function has it already)."
  value       = aws_iam_policy.worker_consume.arn
}

output "function_name" {
  value = aws_lambda_function.delivery.function_name
}

output "event_source_mapping_uuid" {
  value = aws_lambda_event_source_mapping.events.uuid
}
