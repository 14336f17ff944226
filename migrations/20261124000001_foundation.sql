-- Foundation schema. No foreign keys (PlanetScale); every lookup the API makes
-- is served by one of the keys below. Ids are UUIDv7 stored as BINARY(16), so
-- they sort by creation time.

CREATE TABLE customers (
    id          BINARY(16)   NOT NULL,
    name        VARCHAR(200) NOT NULL,
    created_at  DATETIME(3)  NOT NULL,
    PRIMARY KEY (id)
);

-- Only a SHA-256 of each token is kept; `prefix` lets a person tell keys apart.
CREATE TABLE api_keys (
    id           BINARY(16)  NOT NULL,
    customer_id  BINARY(16)  NOT NULL,
    prefix       VARCHAR(16) NOT NULL,
    token_hash   BINARY(32)  NOT NULL,
    created_at   DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY api_keys_token_hash (token_hash),
    KEY api_keys_customer (customer_id, id)
);

CREATE TABLE orders (
    id           BINARY(16)   NOT NULL,
    customer_id  BINARY(16)   NOT NULL,
    reference    VARCHAR(100) NULL,
    status       VARCHAR(20)  NOT NULL,
    pickup       TEXT         NOT NULL,
    delivery     TEXT         NOT NULL,
    parcels      MEDIUMTEXT   NOT NULL,
    notes        TEXT         NULL,
    version      INT UNSIGNED NOT NULL,
    created_at   DATETIME(3)  NOT NULL,
    updated_at   DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY orders_customer_reference (customer_id, reference),
    KEY orders_customer (customer_id, id),
    KEY orders_customer_status (customer_id, status, id),
    KEY orders_status (status, id)
);

-- One row per event, written in the transaction of the change it records:
-- the order's history, the outbox the relay publishes from, and the feed.
CREATE TABLE order_events (
    position     BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    id           BINARY(16)   NOT NULL,
    order_id     BINARY(16)   NOT NULL,
    customer_id  BINARY(16)   NOT NULL,
    sequence     INT UNSIGNED NOT NULL,
    event_type   VARCHAR(64)  NOT NULL,
    payload      MEDIUMTEXT   NOT NULL,
    created_at   DATETIME(3)  NOT NULL,
    published_at DATETIME(3)  NULL,
    PRIMARY KEY (position),
    UNIQUE KEY order_events_id (id),
    UNIQUE KEY order_events_order_sequence (order_id, sequence),
    KEY order_events_customer (customer_id, position),
    KEY order_events_unpublished (published_at, position)
);

-- `owner_id` is the customer, or the nil UUID for the operator. A row with
-- `response_status` NULL is a request still running.
CREATE TABLE idempotency_keys (
    owner_id         BINARY(16)        NOT NULL,
    idempotency_key  VARCHAR(255)      NOT NULL,
    request_hash     BINARY(32)        NOT NULL,
    response_status  SMALLINT UNSIGNED NULL,
    response_body    MEDIUMTEXT        NULL,
    created_at       DATETIME(3)       NOT NULL,
    PRIMARY KEY (owner_id, idempotency_key),
    KEY idempotency_keys_created (created_at)
);
