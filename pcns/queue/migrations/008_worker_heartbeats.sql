-- Worker heartbeats: a dead worker's deliveries are taken over in seconds, not after a lease.
--
-- Each worker process registers a row and refreshes heartbeat_at every
-- delivery.heartbeat_interval. The deliveries it claims carry its id. The reaper (in every live
-- worker) deletes the rows of workers whose heartbeat is older than delivery.worker_timeout and
-- returns their in-flight deliveries to the queue in the same statement; a live worker's
-- attempt, however long, is never taken from it. A worker that finds its own row gone was
-- declared dead (its database was away too long): it abandons what it had in flight and
-- registers again under a new id. host, pid and process_started let a restarted process tell at
-- once that a row on its own host belongs to a process that no longer runs.
CREATE TABLE pcns_workers (
    id              uuid PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    process_started float8 NOT NULL,  -- the process's start time: a reused pid is another process
    version         text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pcns_workers_host ON pcns_workers (host);

-- The worker holding an in-flight delivery. Rows leased before this migration have none: the
-- reaper still returns those when their lease_until has passed.
ALTER TABLE pcns_deliveries ADD COLUMN worker_id uuid;
ALTER TABLE pcns_deliveries ADD CONSTRAINT worker_only_while_in_flight
    CHECK (worker_id IS NULL OR state = 'in_flight');

-- The claim index becomes per target (the walk below reads each target's due rows on its own).
DROP INDEX pcns_deliveries_claim;
CREATE INDEX pcns_deliveries_claim ON pcns_deliveries (target, due_at) WHERE state = 'pending';

-- An attempt that timed out may still land: its request can be held on the way (a proxy, a
-- load balancer) past the worker's timeout. doubt_until: until when this row's last timed-out
-- request may still reach the target. A newer change of the same account claimed while an
-- older one is in doubt is written, then written once more at confirm_after, when no older
-- request can land any more: so the newest password is the one the target keeps.
ALTER TABLE pcns_deliveries ADD COLUMN doubt_until timestamptz;
ALTER TABLE pcns_deliveries ADD COLUMN confirm_after timestamptz;

-- The claim learns whose it is (p_worker) and how much to take: p_targets, the targets this
-- worker is configured for and can start now; p_quota_targets / p_quota: at most that many rows
-- of each of those targets in this claim. So a worker takes only what it can start, instead of
-- claims that would only wait. And it walks each target's due rows on its own, no further than
-- one batch: the claim index is per target, (target, due_at), and the walk takes at most
-- p_limit due rows of each target named, merged in due order, so a claim reads at most
-- (targets x p_limit) index entries however deep a held or busy target's backlog is. A target
-- no worker is configured for is claimed by none; its pending rows end expired at
-- delivery.max_age by the reaper (pcns.queue.store.expire_parked).
DROP FUNCTION pcns_claim_deliveries(integer, uuid, float8, float8);
CREATE FUNCTION pcns_claim_deliveries(
    p_limit integer, p_lease_token uuid, p_lease_seconds float8, p_max_age_seconds float8,
    p_worker uuid, p_targets text[], p_quota_targets text[], p_quota integer[]
) RETURNS TABLE (
    id uuid, change_id uuid, target text, account text, attempts integer, key_id text,
    nonce bytea, ciphertext bytea, state text, age float8
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_targets text[] := '{}';
    v_accounts text[] := '{}';
    v_row record;
    v_quota_at integer;
    v_taken integer[] := array_fill(0, ARRAY[cardinality(p_quota_targets)]);
    -- Held targets' deliveries wait; the list is read once (a handful of rows at most).
    v_held text[] := ARRAY(SELECT h.target FROM pcns_target_holds h);
BEGIN
    FOR v_row IN
        SELECT w.id, w.target, w.account
        FROM unnest(p_targets) AS t(name)
        CROSS JOIN LATERAL (
            SELECT d.id, d.target, d.account, d.due_at FROM pcns_deliveries d
            WHERE d.state = 'pending' AND d.target = t.name AND d.due_at <= now()
            ORDER BY d.due_at
            LIMIT p_limit
        ) AS w
        WHERE t.name <> ALL (v_held)
        ORDER BY w.due_at
    LOOP
        v_quota_at := array_position(p_quota_targets, v_row.target);
        CONTINUE WHEN v_quota_at IS NOT NULL AND v_taken[v_quota_at] >= p_quota[v_quota_at];
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(
            hashtextextended(v_row.target || chr(31) || v_row.account, 0));
        -- The walk reads the snapshot of its start: a row another claim took and committed
        -- since then is skipped here (this statement's snapshot is fresh), not counted.
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM pcns_deliveries d WHERE d.id = v_row.id AND d.state = 'pending');
        IF v_quota_at IS NOT NULL THEN
            v_taken[v_quota_at] := v_taken[v_quota_at] + 1;
        END IF;
        v_targets := v_targets || v_row.target;
        v_accounts := v_accounts || v_row.account;
        EXIT WHEN cardinality(v_targets) >= p_limit;
    END LOOP;
    IF cardinality(v_targets) = 0 THEN
        RETURN;
    END IF;
    -- Step 2, on a fresh snapshot taken with the key locks held (migration 007 explains the
    -- decision; new here: the lease's worker, and confirm_after).
    RETURN QUERY
    WITH k AS (
        SELECT DISTINCT u.target, u.account FROM unnest(v_targets, v_accounts) AS u(target, account)
    ), r AS (
        SELECT d.id, d.target, d.account, d.state, d.order_at, d.seq, d.doubt_until,
               d.due_at <= now() AS due,
               d.created_at < now() - make_interval(secs => p_max_age_seconds) AS too_old
        FROM pcns_deliveries d JOIN k ON d.target = k.target AND d.account = k.account
        WHERE d.state IN ('pending', 'in_flight', 'parked', 'delivered', 'failed')
    ), a AS MATERIALIZED (  -- once, not once per pending row joined to it
        SELECT r.target, r.account,
               bool_or(r.state = 'in_flight') AS busy,
               (array_agg(r.id ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state IN ('pending', 'parked')))[1] AS newest_id,
               (array_agg(r.order_at ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state IN ('pending', 'parked')))[1] AS newest_at,
               (array_agg(r.seq ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state IN ('pending', 'parked')))[1] AS newest_seq,
               (array_agg(r.order_at ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state IN ('delivered', 'failed')))[1] AS done_at,
               (array_agg(r.seq ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state IN ('delivered', 'failed')))[1] AS done_seq
        FROM r GROUP BY r.target, r.account
    ), plan AS (
        SELECT r.id,
               (SELECT max(o.doubt_until) FROM r AS o
                WHERE o.target = r.target AND o.account = r.account AND o.id <> r.id
                  AND o.doubt_until > now()) AS doubt,
               CASE
                   WHEN a.busy THEN NULL
                   WHEN a.done_at IS NOT NULL
                        AND (a.done_at, a.done_seq) > (a.newest_at, a.newest_seq)
                       THEN 'superseded'
                   WHEN r.id <> a.newest_id THEN 'superseded'
                   WHEN r.state = 'parked' THEN NULL  -- the newest is parked: it waits
                   WHEN r.too_old THEN 'expired'
                   WHEN r.due THEN 'in_flight'
               END AS state
        FROM r JOIN a ON r.target = a.target AND r.account = a.account
        WHERE r.state IN ('pending', 'parked')
    )
    UPDATE pcns_deliveries d SET
        state = x.state,
        attempts = d.attempts + CASE WHEN x.state = 'in_flight' THEN 1 ELSE 0 END,
        lease_token = CASE WHEN x.state = 'in_flight' THEN p_lease_token END,
        lease_until = CASE WHEN x.state = 'in_flight'
                      THEN now() + make_interval(secs => p_lease_seconds) END,
        worker_id = CASE WHEN x.state = 'in_flight' THEN p_worker END,
        confirm_after = CASE WHEN x.state = 'in_flight' THEN greatest(d.confirm_after, x.doubt)
                        ELSE d.confirm_after END,
        nonce = CASE WHEN x.state = 'in_flight' THEN d.nonce END,
        ciphertext = CASE WHEN x.state = 'in_flight' THEN d.ciphertext END,
        finished_at = CASE WHEN x.state = 'in_flight' THEN NULL ELSE now() END,
        last_error = CASE x.state
            WHEN 'superseded' THEN 'a newer change for this account superseded it'
            WHEN 'expired' THEN 'older than delivery.max_age'
            ELSE d.last_error END,
        updated_at = now()
    FROM plan x
    WHERE d.id = x.id AND x.state IS NOT NULL AND d.state IN ('pending', 'parked')
    RETURNING d.id, d.change_id, d.target, d.account, d.attempts, d.key_id, d.nonce,
              d.ciphertext, x.state, extract(epoch FROM now() - d.created_at)::float8;
END
$$;
