-- SPEC §15: the W3C traceparent of the request that made each event, so
-- the relay can carry it to SQS and the worker continue that trace; and of
-- each delivery's fan-out, so every attempt (retries too) joins it. NULL
-- when no trace was being recorded. Additive.
ALTER TABLE order_events ADD COLUMN traceparent VARCHAR(128) NULL;
ALTER TABLE webhook_deliveries ADD COLUMN traceparent VARCHAR(128) NULL;
