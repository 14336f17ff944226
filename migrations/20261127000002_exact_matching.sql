-- Exact matching on MySQL 8 (PlanetScale) and MariaDB alike. Neither table
-- named a collation, so each server used its default: MySQL 8's
-- utf8mb4_0900_ai_ci and MariaDB's utf8mb4_general_ci both ignore case
-- (`abc` and `ABC` were one idempotency key, `PO-1` and `po-1` one
-- reference) and differ on trailing spaces. utf8mb4_bin compares code
-- points on both; both pad spaces, which cannot matter: trailing whitespace
-- is refused in references, and HTTP strips it from header values.
-- Online-safe: a column's collation changes in place, nothing is renamed
-- or dropped.
ALTER TABLE idempotency_keys
    MODIFY COLUMN idempotency_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE orders
    MODIFY COLUMN reference VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
