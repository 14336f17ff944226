-- One row per (event, endpoint), created idempotently by the delivery
-- worker; the envelope is kept on the row so every attempt sends the same
-- bytes. The schedule lives here (`next_attempt_at`), not in memory, so a
-- restarted worker carries on. `lease_until` marks a row an attempt is in
-- progress for; a crashed worker's lease runs out and another takes over.
CREATE TABLE webhook_deliveries (
    id                    BINARY(16)        NOT NULL,
    endpoint_id           BINARY(16)        NOT NULL,
    customer_id           BINARY(16)        NOT NULL,
    event_id              BINARY(16)        NOT NULL,
    event_type            VARCHAR(64)       NOT NULL,
    order_id              BINARY(16)        NULL,
    sequence              INT UNSIGNED      NULL,
    payload               MEDIUMTEXT        NOT NULL,
    event_created_at      DATETIME(3)       NOT NULL,
    status                VARCHAR(16)       NOT NULL,
    attempts              INT UNSIGNED      NOT NULL,
    last_response_status  SMALLINT UNSIGNED NULL,
    last_error            VARCHAR(1024)     NULL,
    next_attempt_at       DATETIME(3)       NULL,
    manual_requested_at   DATETIME(3)       NULL,
    lease_until           DATETIME(3)       NULL,
    created_at            DATETIME(3)       NOT NULL,
    updated_at            DATETIME(3)       NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY webhook_deliveries_event_endpoint (event_id, endpoint_id),
    KEY webhook_deliveries_due (status, next_attempt_at),
    KEY webhook_deliveries_manual (manual_requested_at),
    KEY webhook_deliveries_endpoint (endpoint_id, id),
    KEY webhook_deliveries_endpoint_status (endpoint_id, status, id),
    -- Ordering: is an earlier event of this order still pending for this endpoint?
    KEY webhook_deliveries_order (endpoint_id, order_id, sequence)
);

CREATE TABLE webhook_attempts (
    id               BINARY(16)        NOT NULL,
    delivery_id      BINARY(16)        NOT NULL,
    attempt          INT UNSIGNED      NOT NULL,
    started_at       DATETIME(3)       NOT NULL,
    duration_ms      INT UNSIGNED      NOT NULL,
    response_status  SMALLINT UNSIGNED NULL,
    response_body    TEXT              NULL,
    error            VARCHAR(1024)     NULL,
    PRIMARY KEY (id),
    KEY webhook_attempts_delivery (delivery_id, attempt)
);

-- Since when every delivery to the endpoint has failed (NULL: the last succeeded).
ALTER TABLE webhook_endpoints ADD COLUMN failing_since DATETIME(3) NULL;
