-- SPEC §13: the rest of an order's life. Additive only: an older version
-- running beside this one ignores the new columns.
--
-- An order's expected arrival and where it was last seen (by a status
-- change or a tracking update); NULL until given.
ALTER TABLE orders
    ADD COLUMN eta           DATETIME(3)  NULL,
    ADD COLUMN last_location VARCHAR(500) NULL;

-- The order's status after each event: the endpoints' `statuses` filter
-- reads it without opening the payload. NULL on events written before this
-- column (fan-out reads those from the payload).
ALTER TABLE order_events ADD COLUMN status VARCHAR(20) NULL;

-- What an endpoint receives beyond `event_mask` (which keeps the order.*
-- types, every bit set for "all", so types added later reach it):
-- `notice_mask` has a bit per news about the customer's webhooks
-- (1 endpoint.disabled, 2 delivery.failed), none unless listed, so an
-- endpoint created by an older version, or without `event_types`, gets no
-- news it did not ask for. `status_mask` has a bit per order status
-- (`OrderStatus::ALL` order); NULL: every status.
ALTER TABLE webhook_endpoints
    ADD COLUMN notice_mask INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN status_mask INT UNSIGNED NULL;
