-- SPEC §10 and §11. Additive only: an older version running beside this one
-- ignores the new columns and tables.
--
-- An endpoint's pace (attempts a second, NULL: as fast as the worker goes)
-- and its custom headers, a JSON object of name to value sent with every
-- attempt (NULL: none).
ALTER TABLE webhook_endpoints
    ADD COLUMN rate_limit_per_second INT UNSIGNED NULL,
    ADD COLUMN headers TEXT CHARACTER SET utf8mb4 NULL;

-- "The webhooks of this order", across the customer's endpoints.
ALTER TABLE webhook_deliveries
    ADD KEY webhook_deliveries_by_order (order_id, id);

-- Customer portal sessions: only the token's SHA-256 is kept. Ending every
-- session of a customer deletes its rows.
CREATE TABLE portal_sessions (
    id            BINARY(16)   NOT NULL,
    customer_id   BINARY(16)   NOT NULL,
    token_hash    BINARY(32)   NOT NULL,
    capabilities  INT UNSIGNED NOT NULL,
    expires_at    DATETIME(3)  NOT NULL,
    created_at    DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY portal_sessions_token (token_hash),
    KEY portal_sessions_customer (customer_id),
    KEY portal_sessions_expiry (expires_at)
);
