# The dashboard and monitors of deploy/datadog/, applied with the Datadog
# provider: DD_API_KEY and DD_APP_KEY in the environment (and DD_HOST for
# another site), then `terraform init && terraform apply` in this folder.
terraform {
  required_providers {
    datadog = {
      source  = "DataDog/datadog"
      version = "~> 3.40"
    }
  }
}

provider "datadog" {}

resource "datadog_dashboard_json" "pipeline" {
  dashboard = file("${path.module}/dashboard.json")
}

resource "datadog_monitor_json" "pages" {
  for_each = { for m in jsondecode(file("${path.module}/monitors.json")) : m.name => m }
  monitor  = jsonencode(each.value)
}
