-- `published_at` has not been written since the relay keeps one high-water
-- mark (20261127000001), yet every event insert still maintained its index.
-- The column stays (an older version may still read it); its index goes.
ALTER TABLE order_events DROP INDEX order_events_unpublished;
