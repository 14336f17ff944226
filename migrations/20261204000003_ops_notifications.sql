-- SPEC §15: operator notifications go out at most once per subject per
-- 10 minutes across every instance; a subject's row says when its last
-- one went. Additive.
CREATE TABLE ops_notifications (
    subject       VARCHAR(200) NOT NULL,
    last_sent_at  DATETIME(3)  NOT NULL,
    PRIMARY KEY (subject)
);
