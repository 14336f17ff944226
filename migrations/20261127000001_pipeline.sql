-- The pipeline as one pass per turn, measured against the bench (README,
-- Performance). Additive only: an older version still running beside this
-- one keeps reading what it read.
--
-- The relay's turn is a lease on the clock row, taken and renewed in the
-- sequencer's short transaction: no lock is held while SQS is called. What it
-- has published is one high-water mark over feed positions, not a column
-- written per event. `reconciled_through` is the worker's mark: every event
-- up to it has its delivery rows even if its SQS message was lost.
-- The marks are NULL until the code fills them in at start-up (a deploy
-- request carries no data).
ALTER TABLE feed_clock
    ADD COLUMN published_through  BIGINT UNSIGNED NULL,
    ADD COLUMN reconciled_through BIGINT UNSIGNED NULL,
    ADD COLUMN relay_holder       BINARY(16)      NULL,
    ADD COLUMN relay_lease_until  DATETIME(3)     NULL;

-- Events SQS refused for a reason retrying cannot cure (size, content), and
-- the later events of the same order held behind them so that order is kept.
-- The relay passes over them; the operator lists and retries them.
CREATE TABLE outbox_parked (
    event_id            BINARY(16)      NOT NULL,
    order_id            BINARY(16)      NOT NULL,
    feed_position       BIGINT UNSIGNED NOT NULL,
    reason              VARCHAR(1024)   NOT NULL,
    parked_at           DATETIME(3)     NOT NULL,
    retry_requested_at  DATETIME(3)     NULL,
    PRIMARY KEY (event_id),
    KEY outbox_parked_order (order_id, feed_position),
    KEY outbox_parked_position (feed_position)
);

-- Each claim of a delivery gets a fresh lease id; an outcome is written only
-- while the lease that made the attempt is still the row's (a stale settle
-- changes nothing).
ALTER TABLE webhook_deliveries
    ADD COLUMN lease_id BINARY(16) NULL;
