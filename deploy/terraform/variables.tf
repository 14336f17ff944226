variable "aws_region" {
  description = "Region of the queue and the function."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource's name (e.g. mechanica-prod)."
  type        = string
  default     = "mechanica"
}

variable "lambda_zip" {
  description = "The function's package: a zip holding `bootstrap`, the mechanica-delivery binary built for the function's architecture (see deploy/README.md)."
  type        = string
}

variable "lambda_architecture" {
  description = "x86_64 or arm64, as the binary was built."
  type        = string
  default     = "arm64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture is x86_64 or arm64."
  }
}

variable "lambda_timeout_seconds" {
  description = "The function's timeout. A scheduled pass works until this less one WEBHOOK_TIMEOUT and 5 s."
  type        = number
  default     = 60
}

variable "lambda_memory_mb" {
  type    = number
  default = 256
}

variable "maximum_concurrency" {
  description = "Most invocations the SQS mapping runs at once (2..1000). Concurrency × DATABASE_MAX_CONNECTIONS (2) must stay within the database's connection budget."
  type        = number
  default     = 10
  validation {
    condition     = var.maximum_concurrency >= 2 && var.maximum_concurrency <= 1000
    error_message = "maximum_concurrency is 2 to 1000 (an SQS event source mapping's bounds)."
  }
}

variable "batch_size" {
  description = "Messages per invocation."
  type        = number
  default     = 10
}

variable "max_receive_count" {
  description = "Receives before a message goes to the dead-letter queue. Reconciliation still gives a dead-lettered event its deliveries."
  type        = number
  default     = 5
}

variable "schedule_expression" {
  description = "When the scheduled pass runs (due retries, manual retries, reconciliation, retention)."
  type        = string
  default     = "rate(1 minute)"
}

variable "database_url" {
  description = "mysql://… of the PlanetScale branch (with ?ssl-mode=VERIFY_IDENTITY)."
  type        = string
  sensitive   = true
}

variable "environment" {
  description = "More settings for the function (WEBHOOK_RETRY_SCHEDULE, SECRETS_ENCRYPTION_KEY, …)."
  type        = map(string)
  default     = {}
  sensitive   = true
}
