-- dropzone schema. Created (or brought up to date: every statement is idempotent) by the daemon
-- at start, under an advisory lock, so any number of daemons may start at once. {embedding_type} is `vector(<dim>)` with pgvector, else `real[]`.

CREATE TABLE IF NOT EXISTS dz_schema (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The contract other programs read (see README "Database").
CREATE TABLE IF NOT EXISTS documents (
    id             bigserial PRIMARY KEY,
    zone           text        NOT NULL,
    doc_type       text        NOT NULL,
    source_path    text        NOT NULL,
    object_url     text        NOT NULL,
    sha256         text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes     bigint      NOT NULL,
    content_type   text,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    mlflow_run_id  text,
    created_date   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone, sha256)
);

CREATE TABLE IF NOT EXISTS document_embeddings (
    id            bigserial PRIMARY KEY,
    document_id   bigint      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    chunk_index   integer     NOT NULL,
    s3_key        text        NOT NULL,
    doc_type      text        NOT NULL,
    content       text        NOT NULL,
    char_start    bigint      NOT NULL,
    embedding     {embedding_type} NOT NULL,
    model         text        NOT NULL,
    created_date  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, chunk_index, model)
);

-- The ledger: one row per file version, the single source of truth for progress.
-- `stage` is the next thing to do: hash, upload, store, track, finish; or done / quarantined.
CREATE TABLE IF NOT EXISTS dz_files (
    id               bigserial PRIMARY KEY,
    zone             text        NOT NULL,
    rel_path         text        NOT NULL,
    size_bytes       bigint      NOT NULL,
    mtime_ns         bigint      NOT NULL,
    stage            text        NOT NULL DEFAULT 'hash',
    outcome          text,
    sha256           text,
    object_key       text,
    etag             text,
    document_id      bigint,
    chunks           integer,
    batch_id         uuid,
    mlflow_run_id    text,
    reported         boolean     NOT NULL DEFAULT false,
    stage_ms         jsonb       NOT NULL DEFAULT '{}',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    claimed_by       text,
    lease_until      timestamptz,
    discovered_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone, rel_path, size_bytes, mtime_ns)
);

CREATE INDEX IF NOT EXISTS dz_files_work ON dz_files (next_attempt_at, id)
    WHERE stage IN ('hash', 'upload', 'store', 'finish');
CREATE INDEX IF NOT EXISTS dz_files_track ON dz_files (zone, id)
    WHERE stage = 'track' OR (stage = 'quarantined' AND NOT reported);
CREATE INDEX IF NOT EXISTS dz_files_claimed ON dz_files (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS dz_files_batch ON dz_files (batch_id) WHERE batch_id IS NOT NULL;

-- Who owns each content in a zone: the first file version with that sha256 stores it, later
-- ones are duplicates. Makes "same content dropped twice is stored once" hold under races.
CREATE TABLE IF NOT EXISTS dz_contents (
    zone     text   NOT NULL,
    sha256   text   NOT NULL,
    file_id  bigint NOT NULL REFERENCES dz_files (id),
    PRIMARY KEY (zone, sha256)
);

INSERT INTO dz_schema (version) VALUES (1) ON CONFLICT DO NOTHING;

-- version 2: file names that are not valid UTF-8 keep their exact bytes (rel_path shows them
-- with backslash escapes).
ALTER TABLE dz_files ADD COLUMN IF NOT EXISTS rel_raw bytea;
INSERT INTO dz_schema (version) VALUES (2) ON CONFLICT DO NOTHING;

-- version 3: search. With pgvector the daemon adds an HNSW index (queries.sql: hnsw_index)
-- right after these statements; the chunk's doc_type filter uses this index on real[] too.
CREATE INDEX IF NOT EXISTS document_embeddings_model ON document_embeddings (model, doc_type);
INSERT INTO dz_schema (version) VALUES (3) ON CONFLICT DO NOTHING;

-- version 4: each running daemon's view of its dependencies (its breakers: up or down, the
-- last error, since when), written at each change and refreshed every half-minute, for
-- `status`, which runs in another process. A daemon deletes its rows when it stops.
CREATE TABLE IF NOT EXISTS dz_health (
    owner       text        NOT NULL,
    dependency  text        NOT NULL,
    up          boolean     NOT NULL,
    error       text,
    since       timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, dependency)
);
INSERT INTO dz_schema (version) VALUES (4) ON CONFLICT DO NOTHING;

-- version 5: liveness. Each daemon (and each --once) upserts its row every few seconds and marks
-- it stopped when it exits cleanly. A holder whose row says stopped, or whose heartbeat is older
-- than its lease, is dead: any daemon releases its claims (queries.sql: reap_dead). Never judged
-- from /proc: two containers may share a hostname and a pid.
CREATE TABLE IF NOT EXISTS dz_daemons (
    owner         text             PRIMARY KEY,
    host          text             NOT NULL,
    pid           integer          NOT NULL,
    lease_s       double precision NOT NULL,
    started_at    timestamptz      NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz      NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
INSERT INTO dz_schema (version) VALUES (5) ON CONFLICT DO NOTHING;

-- version 6: objects are named by documents (object_url) or by files on their way (object_key).
-- A file that ends without a document removes its object unless one of them still names it;
-- `gc` sweeps what a crash left. Both ask "who names this object?" of these indexes.
CREATE INDEX IF NOT EXISTS documents_object_url ON documents (object_url);
CREATE INDEX IF NOT EXISTS dz_files_object_key ON dz_files (object_key)
    WHERE stage IN ('hash', 'upload', 'store', 'finish');
INSERT INTO dz_schema (version) VALUES (6) ON CONFLICT DO NOTHING;

-- version 7: a chunk row is kept whole in its page. A 384-d vector (1.5 KB) and a 1,000-char
-- chunk made rows over the 2 KB TOAST threshold: the text was compressed and the vector moved
-- to the TOAST table, a second heap insert and index insert per chunk, read back on every
-- search and index build. Inline, a COPY costs 0.015 instead of 0.046 ms of server CPU per
-- chunk. Only rows over 8 KB (long chunks, very wide vectors) go to TOAST now; rows stored
-- before stay as they are.
ALTER TABLE document_embeddings ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE document_embeddings SET (toast_tuple_target = 8160);
INSERT INTO dz_schema (version) VALUES (7) ON CONFLICT DO NOTHING;

-- version 8: hybrid search. Each chunk's words (English stemming, stopwords dropped) kept as a
-- tsvector the server computes on insert (so COPY, which names its columns, is unchanged), with
-- a GIN index for `websearch_to_tsquery` matches. Adding the column rewrites the table once
-- (every stored chunk is parsed: see docs/deploy.md "Upgrade and rollback").
ALTER TABLE document_embeddings ADD COLUMN IF NOT EXISTS content_words tsvector
    GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED;
CREATE INDEX IF NOT EXISTS document_embeddings_words ON document_embeddings
    USING gin (content_words);
INSERT INTO dz_schema (version) VALUES (8) ON CONFLICT DO NOTHING;
