-- An endpoint's `rate_limit_per_second` holds across every worker and
-- Lambda container: the next moment an attempt to it may start, in
-- microseconds of the database's clock, reserved atomically by whoever
-- attempts next (`db::webhook_endpoints::reserve_turn`). Additive.
ALTER TABLE webhook_endpoints ADD COLUMN pace_next_us BIGINT UNSIGNED NULL;
