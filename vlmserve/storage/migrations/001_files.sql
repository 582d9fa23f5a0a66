-- Uploaded files (POST /v1/files). The bytes live in the blob directory under their sha256;
-- rows with the same content share one blob, which is removed with the last row that uses it.
CREATE TABLE files (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: stable list order
    id           TEXT    NOT NULL UNIQUE,            -- "file-..."
    owner        TEXT    NOT NULL,                   -- tenant id ("" while authentication is off)
    bytes        INTEGER NOT NULL CHECK (bytes >= 0),
    created_at   INTEGER NOT NULL,                   -- Unix seconds
    filename     TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,
    content_type TEXT    NOT NULL,                   -- sniffed from the bytes, never trusted
    sha256       TEXT    NOT NULL                    -- hex digest: the blob's name
);

CREATE INDEX files_by_owner ON files (owner, seq);
CREATE INDEX files_by_sha256 ON files (sha256);
