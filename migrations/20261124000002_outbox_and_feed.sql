-- The event feed and the outbox relay.
--
-- `feed_position` is assigned after commit, by one sequencer at a time (see
-- src/sequencer.rs), so the feed's order is commit order: a reader that has
-- passed position N never finds an event below N appear later.
ALTER TABLE order_events
    ADD COLUMN feed_position BIGINT UNSIGNED NULL,
    ADD UNIQUE KEY order_events_feed (feed_position),
    ADD KEY order_events_customer_feed (customer_id, feed_position),
    DROP KEY order_events_customer;

-- The sequencer's lock and counter: the next feed position to hand out.
CREATE TABLE feed_clock (
    id             TINYINT UNSIGNED NOT NULL,
    next_position  BIGINT UNSIGNED  NOT NULL,
    PRIMARY KEY (id)
);
INSERT INTO feed_clock (id, next_position) VALUES (1, 1);

-- Held (FOR UPDATE) by the one relay publishing at a time, so events of one
-- order reach the queue in order even with several API instances.
CREATE TABLE relay_lock (
    id TINYINT UNSIGNED NOT NULL,
    PRIMARY KEY (id)
);
INSERT INTO relay_lock (id) VALUES (1);

-- Keys shared by every instance, made once: e.g. the feed cursors' MAC key.
CREATE TABLE server_secrets (
    name   VARCHAR(64)    NOT NULL,
    value  VARBINARY(64)  NOT NULL,
    PRIMARY KEY (name)
);
