-- Retention: the purge finds settled deliveries by age without a scan.
ALTER TABLE webhook_deliveries
    ADD KEY webhook_deliveries_settled (status, updated_at);
