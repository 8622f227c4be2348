-- Every query the daemon runs, by name. Loaded once by daemon.database.load_queries().
-- Parameters are always positional ($n); nothing is ever formatted into SQL text.

-- name: discover
-- New file versions from the watcher; a version already known is left alone.
INSERT INTO dz_files (zone, rel_path, size_bytes, mtime_ns, rel_raw)
SELECT $1, p, s, m, r FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
    AS t (p, s, m, r)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: claim
-- Take up to $4 files whose next step is due and whose lease (if any) has run out.
UPDATE dz_files AS f
   SET claimed_by = $1, lease_until = now() + make_interval(secs => $2), updated_at = now()
  FROM (SELECT id FROM dz_files
         WHERE stage IN ('hash', 'upload', 'store', 'finish')
           AND next_attempt_at <= now()
           AND zone = ANY($3::text[])
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY next_attempt_at, id
         LIMIT $4
           FOR UPDATE SKIP LOCKED) AS picked
 WHERE f.id = picked.id
RETURNING f.*;

-- name: advance
-- Record a stage's outputs and the next stage; only the claim holder may. Leaving the worker
-- stages (for track, done or quarantine) gives the claim back.
UPDATE dz_files
   SET stage = $3,
       outcome = COALESCE($4, outcome),
       sha256 = COALESCE($5, sha256),
       object_key = COALESCE($6, object_key),
       etag = COALESCE($7, etag),
       document_id = COALESCE($8, document_id),
       chunks = COALESCE($9, chunks),
       stage_ms = stage_ms || $10::jsonb,
       claimed_by = CASE WHEN $3 IN ('track', 'done') THEN NULL ELSE claimed_by END,
       lease_until = CASE WHEN $3 IN ('track', 'done') THEN NULL
                          ELSE now() + make_interval(secs => $11) END,
       updated_at = now()
 WHERE id = $1 AND claimed_by = $2
RETURNING id;

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
-- Renew the claims this process knows it holds (not ones whose claim reply was lost).
UPDATE dz_files SET lease_until = now() + make_interval(secs => $2)
 WHERE claimed_by = $1 AND id = ANY($3::bigint[]);

-- name: release_strays
-- Claims recorded for us whose reply never reached us (the connection broke): hand them back.
UPDATE dz_files SET claimed_by = NULL, lease_until = NULL
 WHERE claimed_by = $1 AND NOT (id = ANY($2::bigint[]))
RETURNING id;

-- name: own_content
-- The first version of a content in a zone owns it; a quarantined or vanished owner is replaced.
-- Returns a row only when $3 is (now) the owner.
INSERT INTO dz_contents AS c (zone, sha256, file_id) VALUES ($1, $2, $3)
ON CONFLICT (zone, sha256) DO UPDATE SET file_id = EXCLUDED.file_id
 WHERE c.file_id = EXCLUDED.file_id
    OR EXISTS (SELECT 1 FROM dz_files o
                WHERE o.id = c.file_id
                  AND (o.stage = 'quarantined' OR o.outcome IN ('vanished', 'superseded')))
RETURNING file_id;

-- name: content_owner
SELECT f.id, f.rel_path FROM dz_contents c JOIN dz_files f ON f.id = c.file_id
 WHERE c.zone = $1 AND c.sha256 = $2;

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
-- The MLflow record exists: stored files go on to finish, failures count as reported, and
-- documents learn their run id.
WITH marked AS (
    UPDATE dz_files
       SET mlflow_run_id = $3, reported = true,
           stage = CASE WHEN stage = 'track' THEN 'finish' ELSE stage END,
           claimed_by = NULL, lease_until = NULL, updated_at = now()
     WHERE id = ANY($2::bigint[]) AND claimed_by = $1
    RETURNING document_id
)
UPDATE documents SET mlflow_run_id = $3
 WHERE id IN (SELECT document_id FROM marked WHERE document_id IS NOT NULL);

-- name: unfinished
-- Work a --once run still waits for: file versions up to its horizon still in these stages.
SELECT count(*) FROM dz_files
 WHERE stage = ANY($3::text[])
   AND zone = ANY($1::text[]) AND id <= $2;

-- name: untracked
SELECT count(*) FROM dz_files
 WHERE (stage = 'track' OR (stage = 'quarantined' AND NOT reported))
   AND zone = ANY($1::text[]) AND id <= $2;

-- name: claim_holders
-- Everyone holding a live claim (the reaper checks which of them died on this host).
SELECT DISTINCT claimed_by FROM dz_files WHERE claimed_by IS NOT NULL;

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
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
ON CONFLICT (zone, sha256) DO NOTHING
RETURNING id;

-- name: find_document
SELECT d.id,
       (SELECT count(*) FROM document_embeddings e
         WHERE e.document_id = d.id AND e.model = $3) AS chunks
  FROM documents d
 WHERE d.zone = $1 AND d.sha256 = $2;

-- name: document_metadata
UPDATE documents SET metadata = $2::jsonb WHERE id = $1;
