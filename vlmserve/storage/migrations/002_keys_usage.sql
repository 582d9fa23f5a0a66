-- API keys (vlmserve keys create): only the SHA-256 of a key is stored, never the key.
CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,               -- "key_...": the owner of files, the cache tenant
    name         TEXT    NOT NULL,
    key_hash     TEXT    NOT NULL UNIQUE,           -- hex SHA-256 of the whole key
    key_hint     TEXT    NOT NULL,                  -- "sk-ab12...wxyz": to recognise it in a list
    tier         TEXT,                              -- NULL: the configured default tier
    quota_tokens INTEGER CHECK (quota_tokens IS NULL OR quota_tokens >= 0),  -- NULL: no quota
    is_admin     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,                  -- Unix seconds
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- A name is reusable once its key is revoked.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- The usage ledger: one row per finished chat request (aborted and failed ones included).
CREATE TABLE usage (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at        REAL    NOT NULL,              -- Unix seconds, when the request finished
    key_id            TEXT    NOT NULL,              -- "" while authentication is off
    key_name          TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,    -- cached, image and video tokens included
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    image_tokens      INTEGER NOT NULL DEFAULT 0,
    video_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    status            TEXT    NOT NULL,              -- "ok", "aborted", or the error code
    trace_id          TEXT    NOT NULL
);

CREATE INDEX usage_by_key ON usage (key_id, created_at);
CREATE INDEX usage_by_time ON usage (created_at);
