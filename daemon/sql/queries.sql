-- Every query the daemon runs, by name. Loaded once by daemon.database.load_queries().
-- Parameters are always positional ($n); nothing is ever formatted into SQL text.

-- name: discover
-- New file versions from the watcher; a version already known is left alone.
INSERT INTO dz_files (zone, rel_path, size_bytes, mtime_ns, rel_raw)
SELECT $1, p, s, m, r FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
    AS t (p, s, m, r)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: analyze_ledger
-- After a large discovery (daemon.ledger): a role that may not analyze gets a warning, no error.
ANALYZE dz_files;

-- name: claim
-- Take up to $4 files whose next step is due and whose lease (if any) has run out; never one
-- of ours still in hand ($5: a stuck one's lease lapses for others to take, not for us).
UPDATE dz_files AS f
   SET claimed_by = $1, lease_until = now() + make_interval(secs => $2), updated_at = now()
  FROM (SELECT id FROM dz_files
         WHERE stage IN ('hash', 'upload', 'store', 'finish')
           AND next_attempt_at <= now()
           AND zone = ANY($3::text[])
           AND (lease_until IS NULL OR lease_until < now())
           AND NOT (id = ANY($5::bigint[]))
         ORDER BY next_attempt_at, id
         LIMIT $4
           FOR UPDATE SKIP LOCKED) AS picked
 WHERE f.id = picked.id
RETURNING f.*;

-- name: advance
-- Record stage results for many files at once: each row's next stage and outputs (NULL keeps
-- what is there). Only the claim holder may; rows not returned were taken by someone else.
-- Leaving the worker stages (for track or done) gives the claim back.
UPDATE dz_files AS f
   SET stage = v.stage,
       outcome = COALESCE(v.outcome, f.outcome),
       sha256 = COALESCE(v.sha256, f.sha256),
       object_key = COALESCE(v.object_key, f.object_key),
       etag = COALESCE(v.etag, f.etag),
       document_id = COALESCE(v.document_id, f.document_id),
       chunks = COALESCE(v.chunks, f.chunks),
       stage_ms = f.stage_ms || v.stage_ms,
       claimed_by = CASE WHEN v.stage IN ('track', 'done') THEN NULL ELSE f.claimed_by END,
       lease_until = CASE WHEN v.stage IN ('track', 'done') THEN NULL
                          ELSE now() + make_interval(secs => $2) END,
       updated_at = now()
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
              $9::bigint[], $10::int[], $11::jsonb[])
       AS v (id, stage, outcome, sha256, object_key, etag, document_id, chunks, stage_ms)
 WHERE f.id = v.id AND f.claimed_by = $1
RETURNING f.id;

-- name: object_wanted
-- Is an object still named: by a document (of any zone: content is shared when the key template
-- has no {zone}), or by another file version on its way?
SELECT EXISTS (SELECT 1 FROM documents WHERE object_url = $1)
    OR EXISTS (SELECT 1 FROM dz_files
                WHERE object_key = $2 AND id <> $3
                  AND stage IN ('hash', 'upload', 'store', 'finish'));

-- name: retry_later
-- $5 is 1 when the attempt counts against the file's budget, 0 when a dependency was down.
UPDATE dz_files
   SET attempts = attempts + $5::int, last_error = $3,
       next_attempt_at = now() + make_interval(secs => $4),
       claimed_by = NULL, lease_until = NULL, updated_at = now()
 WHERE id = $1 AND claimed_by = $2
RETURNING attempts;

-- name: quarantine
UPDATE dz_files
   SET stage = 'quarantined', outcome = 'quarantined', last_error = $3, attempts = attempts + 1,
       claimed_by = NULL, lease_until = NULL, updated_at = now()
 WHERE id = $1 AND claimed_by = $2
RETURNING id;

-- name: release
UPDATE dz_files SET claimed_by = NULL, lease_until = NULL
 WHERE id = ANY($2::bigint[]) AND claimed_by = $1;

-- name: release_owner
-- A clean shutdown gives back every claim at once, so other daemons need not wait for leases.
UPDATE dz_files SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1;

-- name: heartbeat
-- Renew the claims whose work moved lately (not ones whose claim reply was lost, nor stuck ones).
-- Rows locked right now are skipped, never waited on: our own advance holds them (and renews
-- them as it commits); waiting made the two deadlock, each lock taken in its own order.
UPDATE dz_files SET lease_until = now() + make_interval(secs => $2)
 WHERE id IN (SELECT id FROM dz_files WHERE claimed_by = $1 AND id = ANY($3::bigint[])
              FOR UPDATE SKIP LOCKED);

-- name: release_strays
-- Claims recorded for us whose reply never reached us (the connection broke): hand them back.
UPDATE dz_files SET claimed_by = NULL, lease_until = NULL
 WHERE claimed_by = $1 AND NOT (id = ANY($2::bigint[]))
RETURNING id;

-- name: own_content
-- The first version of a content in a zone owns it; a quarantined or vanished owner is replaced.
-- Takes distinct (zone, sha256) pairs; returns the ids that are (now) owners.
INSERT INTO dz_contents AS c (zone, sha256, file_id)
SELECT zone, sha256, file_id FROM unnest($1::text[], $2::text[], $3::bigint[])
    AS v (zone, sha256, file_id)
ON CONFLICT (zone, sha256) DO UPDATE SET file_id = EXCLUDED.file_id
 WHERE c.file_id = EXCLUDED.file_id
    OR EXISTS (SELECT 1 FROM dz_files o
                WHERE o.id = c.file_id
                  AND (o.stage = 'quarantined' OR o.outcome IN ('vanished', 'superseded')))
RETURNING file_id;

-- name: content_owner
SELECT c.zone, c.sha256, f.id, f.rel_path
  FROM dz_contents c
  JOIN dz_files f ON f.id = c.file_id
  JOIN unnest($1::text[], $2::text[]) AS k (zone, sha256)
    ON k.zone = c.zone AND k.sha256 = c.sha256;

-- name: track_window
-- How much is waiting for an MLflow record, and for how long.
SELECT count(*) AS files,
       COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at)), 0)::float8 AS oldest_s
  FROM dz_files
 WHERE (stage = 'track' OR (stage = 'quarantined' AND NOT reported))
   AND zone = ANY($1::text[])
   AND (lease_until IS NULL OR lease_until < now());

-- name: claim_orphan_batch
-- A batch whose tracker died before finishing: take all of it, so it ends in the same run.
UPDATE dz_files AS f
   SET claimed_by = $1, lease_until = now() + make_interval(secs => $2), updated_at = now()
 WHERE f.batch_id = (SELECT batch_id FROM dz_files
                      WHERE batch_id IS NOT NULL
                        AND (stage = 'track' OR (stage = 'quarantined' AND NOT reported))
                        AND zone = ANY($3::text[])
                        AND (lease_until IS NULL OR lease_until < now())
                      LIMIT 1)
   AND (f.stage = 'track' OR (f.stage = 'quarantined' AND NOT f.reported))
   AND (f.lease_until IS NULL OR f.lease_until < now())
RETURNING f.*;

-- name: claim_new_batch
UPDATE dz_files AS f
   SET batch_id = $4, claimed_by = $1, lease_until = now() + make_interval(secs => $2),
       updated_at = now()
  FROM (SELECT id FROM dz_files
         WHERE batch_id IS NULL
           AND (stage = 'track' OR (stage = 'quarantined' AND NOT reported))
           AND zone = ANY($3::text[])
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY id
         LIMIT $5
           FOR UPDATE SKIP LOCKED) AS picked
 WHERE f.id = picked.id
RETURNING f.*;

-- name: tracked
-- The MLflow records exist: stored files go on to finish, failures count as reported, and
-- documents learn their run id. Each file $2 with its run id $3 (in the same order: one run
-- for a batch, or one per file; NULL for failures, which get no run).
WITH runs AS (
    SELECT * FROM unnest($2::bigint[], $3::text[]) AS r(id, run_id)
), marked AS (
    UPDATE dz_files f
       SET mlflow_run_id = r.run_id, reported = true,
           stage = CASE WHEN f.stage = 'track' THEN 'finish' ELSE f.stage END,
           claimed_by = NULL, lease_until = NULL, updated_at = now()
      FROM runs r
     WHERE f.id = r.id AND f.claimed_by = $1
    RETURNING f.document_id, r.run_id
)
UPDATE documents d SET mlflow_run_id = m.run_id
  FROM marked m
 WHERE d.id = m.document_id;

-- name: unfinished
-- Work a --once run still waits for: file versions up to its horizon still in these stages.
SELECT count(*) FROM dz_files
 WHERE stage = ANY($3::text[])
   AND zone = ANY($1::text[]) AND id <= $2;

-- name: untracked
SELECT count(*) FROM dz_files
 WHERE (stage = 'track' OR (stage = 'quarantined' AND NOT reported))
   AND zone = ANY($1::text[]) AND id <= $2;

-- name: waiting
-- Files of these zones not yet at their end (waiting, retrying or in flight), by zone: the
-- daemon's STATUS line and queue-depth gauge, every few seconds.
SELECT zone, count(*) AS files FROM dz_files
 WHERE stage IN ('hash', 'upload', 'store', 'track', 'finish') AND zone = ANY($1::text[])
 GROUP BY zone;

-- name: daemon_alive
-- This daemon's heartbeat row ($1 owner, $2 host, $3 pid, $4 lease_s), every few seconds.
INSERT INTO dz_daemons AS d (owner, host, pid, lease_s) VALUES ($1, $2, $3, $4)
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), lease_s = EXCLUDED.lease_s,
                                  stopped_at = NULL;

-- name: daemon_stopped
-- A clean exit (its claims were given back): no one need wait for its heartbeat to age.
UPDATE dz_daemons SET stopped_at = now(), heartbeat_at = now() WHERE owner = $1;

-- name: reap_dead
-- Release the claims of dead holders: stopped, or silent for longer than their own lease. A
-- holder without a row (a daemon from before dz_daemons) keeps its claims until they expire.
UPDATE dz_files AS f SET claimed_by = NULL, lease_until = NULL
  FROM dz_daemons AS d
 WHERE f.claimed_by = d.owner AND d.owner <> $1
   AND (d.stopped_at IS NOT NULL OR d.heartbeat_at < now() - make_interval(secs => d.lease_s))
RETURNING f.claimed_by;

-- name: forget_daemons
-- Rows of daemons gone for a day that hold nothing.
DELETE FROM dz_daemons AS d
 WHERE d.heartbeat_at < now() - interval '1 day'
   AND NOT EXISTS (SELECT 1 FROM dz_files f WHERE f.claimed_by = d.owner);

-- name: horizon
SELECT COALESCE(max(id), 0) FROM dz_files;

-- name: status
SELECT zone, stage, COALESCE(outcome, '') AS outcome, count(*) AS files,
       COALESCE(sum(size_bytes), 0)::bigint AS bytes, max(updated_at) AS last_update
  FROM dz_files
 GROUP BY zone, stage, outcome
 ORDER BY zone, stage, outcome;

-- name: insert_document
INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes,
                       content_type, metadata)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                     $7::text[], $8::jsonb[])
ON CONFLICT (zone, sha256) DO NOTHING
RETURNING id, zone, sha256;

-- name: find_document
-- Documents that already exist for these contents, with how many chunks this model gave them.
SELECT d.id, d.zone, d.sha256,
       (SELECT count(*) FROM document_embeddings e
         WHERE e.document_id = d.id AND e.model = $3) AS chunks
  FROM documents d
  JOIN unnest($1::text[], $2::text[]) AS k (zone, sha256)
    ON d.zone = k.zone AND d.sha256 = k.sha256;

-- name: document_metadata
UPDATE documents SET metadata = $2::jsonb WHERE id = $1;

-- name: hnsw_index
-- With pgvector: an HNSW index for cosine search, kept up to date by inserts. Created with the
-- schema while the table is empty (CONCURRENTLY would wait there on daemons queued for the
-- schema lock, which wait on us); over rows, built CONCURRENTLY (the next query).
CREATE INDEX IF NOT EXISTS document_embeddings_hnsw
    ON document_embeddings USING hnsw (embedding vector_cosine_ops);

-- name: hnsw_index_concurrently
-- Built (and dropped before a large backlog) by daemon.vectorindex without holding up writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS document_embeddings_hnsw
    ON document_embeddings USING hnsw (embedding vector_cosine_ops);

-- name: drop_search_index
DROP INDEX CONCURRENTLY IF EXISTS document_embeddings_hnsw;

-- name: search_index_facts
-- What decides whether the HNSW index should exist now: the bytes of the files still to be
-- stored (every zone), the chunks stored (estimated as the planner does, from the rows per page
-- last seen and the pages now; counted while no page was ever seen), and the index: NULL when missing, false while built (or left invalid by a build
-- that was cut).
SELECT backlog.files, backlog.bytes,
       (SELECT CASE WHEN relpages > 0 AND reltuples >= 0
                    THEN (reltuples / relpages * (pg_relation_size(oid) /
                          current_setting('block_size')::int))::bigint
                    ELSE (SELECT count(*) FROM document_embeddings) END
          FROM pg_class WHERE oid = 'document_embeddings'::regclass) AS chunks,
       (SELECT indisvalid FROM pg_index
         WHERE indexrelid = to_regclass('document_embeddings_hnsw')) AS valid
  FROM (SELECT count(*) AS files, coalesce(sum(size_bytes), 0)::bigint AS bytes FROM dz_files
         WHERE stage IN ('hash', 'upload', 'store')) AS backlog;

-- name: search_index_progress
-- How far the index build of backend $1 is: tuples if the server counts them, else blocks of
-- the table (pgvector 0.6 reports blocks while it loads the rows).
SELECT phase,
       CASE WHEN tuples_total > 0 THEN tuples_done ELSE blocks_done END AS done,
       CASE WHEN tuples_total > 0 THEN tuples_total ELSE blocks_total END AS total
  FROM pg_stat_progress_create_index WHERE pid = $1;

-- name: search_vector
-- pgvector: the $5 nearest chunks of model $2 (through the HNSW index), filtered by zone $3 and
-- doc_type $4 when given; the caller keeps each document's best chunk.
SELECT e.document_id, e.chunk_index, e.content, 1 - (e.embedding <=> $1) AS score,
       d.zone, d.doc_type, d.source_path, d.object_url, d.metadata
  FROM document_embeddings e JOIN documents d ON d.id = e.document_id
 WHERE e.model = $2
   AND ($3::text IS NULL OR d.zone = $3)
   AND ($4::text IS NULL OR e.doc_type = $4)
 ORDER BY e.embedding <=> $1
 LIMIT $5;

-- name: search_text
-- Full text: the $5 chunks of model $2 whose words match the query $1 (`websearch_to_tsquery`:
-- words, "quoted phrases", -not, or), through the GIN index on content_words, by ts_rank_cd
-- (how many query words, how close together), filtered by zone $3 and doc_type $4 when given.
SELECT e.document_id, e.chunk_index, e.content, ts_rank_cd(e.content_words, q) AS score,
       d.zone, d.doc_type, d.source_path, d.object_url, d.metadata
  FROM document_embeddings e JOIN documents d ON d.id = e.document_id
 CROSS JOIN websearch_to_tsquery('english', $1) AS q
 WHERE e.content_words @@ q
   AND e.model = $2
   AND ($3::text IS NULL OR d.zone = $3)
   AND ($4::text IS NULL OR e.doc_type = $4)
 ORDER BY score DESC, e.id
 LIMIT $5;

-- name: search_text_some
-- Hybrid, when few chunks hold every word: which of the chunks $3 (the vector ranking's, their
-- text already in hand, so no row is read again) hold some of the words ($1, the words OR'ed)
-- but not all ($2, the query), with their rank: (position in $3, rank).
SELECT i, ts_rank_cd(w, $1::tsquery) AS score
  FROM unnest($3::text[]) WITH ORDINALITY AS t (c, i)
 CROSS JOIN LATERAL to_tsvector('english', c) AS w
 WHERE w @@ $1::tsquery AND NOT w @@ $2::tsquery;

-- name: query_lexemes
-- The query $1 as full text search reads it, and how many words it has (0: empty, stopwords).
SELECT numnode(q) AS words, q::text AS every FROM websearch_to_tsquery('english', $1) AS q;

-- name: search_excerpts
-- The chunks $1, each cut to the passage with the most query ($2) words, those marked **so**.
SELECT ts_headline('english', c, websearch_to_tsquery('english', $2),
                   'StartSel=**, StopSel=**, MinWords=15, MaxWords=35, MaxFragments=2, '
                   'FragmentDelimiter=" … "')
  FROM unnest($1::text[]) WITH ORDINALITY AS t (c, i)
 ORDER BY i;

-- name: search_array
-- real[] (no pgvector): every chunk of model $2 scored in SQL by the dot product with $1 (the
-- vectors are unit length, so this is the cosine; in float8, as products of float4 components
-- can underflow); the caller keeps each document's best chunk.
SELECT e.document_id, e.chunk_index, e.content, s.score,
       d.zone, d.doc_type, d.source_path, d.object_url, d.metadata
  FROM document_embeddings e JOIN documents d ON d.id = e.document_id
 CROSS JOIN LATERAL (SELECT sum(a::float8 * b) AS score
                       FROM unnest(e.embedding, $1::real[]) AS t (a, b)) AS s
 WHERE e.model = $2
   AND ($3::text IS NULL OR d.zone = $3)
   AND ($4::text IS NULL OR e.doc_type = $4)
 ORDER BY s.score DESC
 LIMIT $5;

-- name: reembed_todo
-- Stored documents with text that have no chunks of model $1 yet (zone $2 when given), each
-- with the object key it was stored under.
SELECT DISTINCT ON (d.id) d.id, d.zone, d.doc_type, d.source_path, f.object_key
  FROM documents d JOIN dz_files f ON f.document_id = d.id AND f.object_key IS NOT NULL
 WHERE ($2::text IS NULL OR d.zone = $2)
   AND coalesce(d.metadata->>'extraction', '') NOT IN ('unsupported', 'binary')
   AND NOT EXISTS (SELECT 1 FROM document_embeddings e
                    WHERE e.document_id = d.id AND e.model = $1)
 ORDER BY d.id;

-- name: drop_other_models
-- `reembed --replace`: a document's chunks of every model but $2.
DELETE FROM document_embeddings WHERE document_id = $1 AND model <> $2;

-- operator commands ----------------------------------------------------------------------------
-- `status`, `check` and `quarantine` (daemon/commands/). They read the ledger, and `quarantine
-- retry` resets a quarantined row so that the next claim takes the file again.

-- name: status_details
-- Per zone in $1: the oldest file not yet done or quarantined (by discovery), the latest error
-- of a file not done (waiting for a retry, or quarantined), and how many files went all the way
-- (stored or duplicate) in the last 5 minutes and hour. One pass over the ledger (`seen` is
-- materialised once); ages are the server's, in seconds.
WITH seen AS (
    SELECT id, zone, rel_path, stage, outcome, last_error, discovered_at, updated_at
      FROM dz_files
     WHERE zone = ANY($1::text[])
       AND (stage <> 'done' OR updated_at > now() - interval '1 hour')
), waiting AS (
    SELECT DISTINCT ON (zone) zone, rel_path, discovered_at FROM seen
     WHERE stage IN ('hash', 'upload', 'store', 'track', 'finish')
     ORDER BY zone, discovered_at, id
), failing AS (
    SELECT DISTINCT ON (zone) zone, rel_path, last_error, updated_at, stage FROM seen
     WHERE stage <> 'done' AND last_error IS NOT NULL
     ORDER BY zone, updated_at DESC, id DESC
), finished AS (
    SELECT zone, count(*) FILTER (WHERE updated_at > now() - interval '5 minutes') AS last_5m,
           count(*) AS last_1h
      FROM seen
     WHERE stage = 'done' AND outcome IN ('stored', 'duplicate')
     GROUP BY zone
)
SELECT z.zone,
       w.rel_path AS waiting_path, w.discovered_at AS waiting_since,
       EXTRACT(EPOCH FROM now() - w.discovered_at)::float8 AS waiting_s,
       e.rel_path AS error_path, e.last_error AS error, e.updated_at AS error_at,
       e.stage AS error_stage,
       COALESCE(f.last_5m, 0) AS finished_5m, COALESCE(f.last_1h, 0) AS finished_1h
  FROM unnest($1::text[]) AS z (zone)
  LEFT JOIN waiting AS w ON w.zone = z.zone
  LEFT JOIN failing AS e ON e.zone = z.zone
  LEFT JOIN finished AS f ON f.zone = z.zone
 ORDER BY z.zone;

-- name: pgvector_facts
-- `check`: is pgvector in this database, could the server install it, and what type the stored
-- embeddings have (`vector(n)`, `real[]`, or NULL before the schema exists).
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS installed,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'vector') AS available,
       (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = to_regclass('document_embeddings') AND attname = 'embedding')
           AS column_type,
       COALESCE((SELECT indisvalid FROM pg_index
                  WHERE indexrelid = to_regclass('document_embeddings_hnsw')), false)
           AS hnsw_index,
       current_setting('server_version_num')::int / 10000 AS major;

-- name: quarantined_files
-- Quarantined files, oldest first; zone $1 when given.
SELECT * FROM dz_files
 WHERE stage = 'quarantined' AND ($1::text IS NULL OR zone = $1)
 ORDER BY updated_at, id;

-- name: files_by_id
SELECT * FROM dz_files WHERE id = ANY($1::bigint[]) ORDER BY id;

-- name: requeue_quarantined
-- `quarantine retry`, the file back in its zone as the same version: the row starts over at
-- hash with a fresh attempt budget and no outputs, unreported, so it is claimed, stored and
-- recorded in MLflow again like a new file (the discover of its version does nothing: the row
-- exists). Only a row still quarantined.
UPDATE dz_files
   SET stage = 'hash', outcome = NULL, sha256 = NULL, object_key = NULL, etag = NULL,
       document_id = NULL, chunks = NULL, batch_id = NULL, mlflow_run_id = NULL,
       reported = false, stage_ms = '{}', attempts = 0, next_attempt_at = now(),
       last_error = NULL, claimed_by = NULL, lease_until = NULL, updated_at = now()
 WHERE id = $1 AND stage = 'quarantined'
RETURNING id;

-- name: supersede_quarantined
-- `quarantine retry`, the file back in its zone but changed while in quarantine: a new version,
-- which the watcher discovers as such; this one is over.
UPDATE dz_files
   SET stage = 'done', outcome = 'superseded', claimed_by = NULL, lease_until = NULL,
       updated_at = now()
 WHERE id = $1 AND stage = 'quarantined'
RETURNING id;

-- health (daemon/health.py, `status`) -----------------------------------------------------------

-- name: health_record
-- A daemon's dependencies as it sees them now ($1 its owner id; arrays of dependency, up,
-- last error, since). Rows nobody refreshed for a day are a dead daemon's: dropped here.
WITH gone AS (
    DELETE FROM dz_health WHERE updated_at < now() - interval '1 day' AND owner <> $1
)
INSERT INTO dz_health (owner, dependency, up, error, since, updated_at)
SELECT $1, d, u, e, s, now()
  FROM unnest($2::text[], $3::boolean[], $4::text[], $5::timestamptz[]) AS t (d, u, e, s)
ON CONFLICT (owner, dependency) DO UPDATE
   SET up = EXCLUDED.up, error = EXCLUDED.error, since = EXCLUDED.since, updated_at = now();

-- name: health_forget
DELETE FROM dz_health WHERE owner = $1;

-- name: health_rows
-- `status`: the rows of daemons that are alive: refreshed in the last $1 seconds, or holding
-- claims (a daemon busy past its refresh). Older rows are a dead daemon's and are not shown.
SELECT owner, dependency, up, error, since,
       EXTRACT(EPOCH FROM now() - since)::float8 AS for_s
  FROM dz_health
 WHERE updated_at > now() - make_interval(secs => $1)
    OR owner IN (SELECT claimed_by FROM dz_files WHERE claimed_by IS NOT NULL)
 ORDER BY dependency, since;

-- name: health_waiting
-- `status`: per dependency ($1) the files not at their end that wait for it: at the stage that
-- needs it ($2, same order), or waiting for a retry after an error that names it.
SELECT d.dependency, count(f.id) AS files
  FROM unnest($1::text[], $2::text[]) AS d (dependency, stage)
  LEFT JOIN dz_files AS f
    ON f.stage IN ('hash', 'upload', 'store', 'track', 'finish')
   AND (f.stage = d.stage
        OR (f.next_attempt_at > now() AND f.last_error LIKE d.dependency || ' unavailable%'))
 GROUP BY d.dependency;

-- gc -------------------------------------------------------------------------------------------
-- `gc` (daemon/commands/gc.py): which of the objects it listed something still names.

-- name: gc_named
-- Of these objects (keys $1, their URLs $2 in the same order), the keys something still names:
-- a documents row by its object_url (content shared by zones: any one of them); a ledger row
-- not at its end (a file between hash, which fixes the key, and store); or the ledger row that
-- stored a document that still exists (a document stored before the store's folder or bucket
-- was renamed names its object only this way). One statement, so one snapshot: a document and
-- its ledger row commit together, and a file is seen on one side or the other, never neither.
-- Each branch is a semi-join, so without an index on documents.object_url or
-- dz_files.object_key each table is scanned once per call, not once per key.
WITH c AS (SELECT * FROM unnest($1::text[], $2::text[]) AS c (key, url))
SELECT key FROM c WHERE EXISTS (SELECT 1 FROM documents AS d WHERE d.object_url = c.url)
UNION
SELECT key FROM c WHERE EXISTS (SELECT 1 FROM dz_files AS f
                                 WHERE f.object_key = c.key
                                   AND f.stage NOT IN ('done', 'quarantined'))
UNION
SELECT key FROM c WHERE EXISTS (SELECT 1 FROM dz_files AS f
                                  JOIN documents AS d ON d.id = f.document_id
                                 WHERE f.object_key = c.key);

-- name: end_lost_sessions
-- server ends of our connections that our pool dropped (a timeout on a frozen connection):
-- still running, perhaps holding locks. Connections still being set up are left alone, and
-- so are the parallel workers of a query of ours (they carry its application_name: ending
-- one cut a search index build short).
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended
FROM pg_stat_activity
WHERE application_name = $1 AND pid <> ALL($2::int[]) AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND leader_pid IS NULL
  AND backend_start < now() - make_interval(secs => $3);
