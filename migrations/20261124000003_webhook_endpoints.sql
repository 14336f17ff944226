-- Webhook endpoints. `event_mask` has a bit per event type (1 order.created,
-- 2 order.status_changed); "all types" sets every bit, so types added later
-- reach endpoints that asked for all. Secrets are stored as given or, with
-- SECRETS_ENCRYPTION_KEY, sealed with AES-256-GCM ("v1:" prefix).
CREATE TABLE webhook_endpoints (
    id                          BINARY(16)    NOT NULL,
    customer_id                 BINARY(16)    NOT NULL,
    url                         VARCHAR(2048) NOT NULL,
    description                 VARCHAR(500)  NULL,
    event_mask                  INT UNSIGNED  NOT NULL,
    enabled                     TINYINT(1)    NOT NULL,
    disabled_reason             VARCHAR(500)  NULL,
    secret                      VARCHAR(255)  NOT NULL,
    previous_secret             VARCHAR(255)  NULL,
    previous_secret_expires_at  DATETIME(3)   NULL,
    created_at                  DATETIME(3)   NOT NULL,
    updated_at                  DATETIME(3)   NOT NULL,
    PRIMARY KEY (id),
    KEY webhook_endpoints_customer (customer_id, id),
    -- The delivery worker's lookup: a customer's enabled endpoints.
    KEY webhook_endpoints_subscribed (customer_id, enabled, event_mask)
);
