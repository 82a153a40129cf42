-- Operators' tools: parked deliveries, target holds, and the operators' audit trail.
--
-- parked: a delivery that failed permanently or ran out of attempts. It keeps its sealed
-- ciphertext, visible and retryable, until the change's delivery.max_age; then it ends expired
-- and the ciphertext is deleted in that statement. So what a fixable mistake held back (a
-- read-only file system, a refused login) can be retried, and nothing is kept past max_age.
ALTER TABLE pcns_deliveries DROP CONSTRAINT pcns_deliveries_state_check;
ALTER TABLE pcns_deliveries ADD CONSTRAINT pcns_deliveries_state_check CHECK (state IN (
    'pending', 'in_flight', 'parked', 'delivered', 'failed', 'superseded', 'expired',
    'cancelled')) NOT VALID;
ALTER TABLE pcns_deliveries VALIDATE CONSTRAINT pcns_deliveries_state_check;
ALTER TABLE pcns_deliveries DROP CONSTRAINT ciphertext_only_while_open;
ALTER TABLE pcns_deliveries ADD CONSTRAINT ciphertext_only_while_open CHECK (
    (state IN ('pending', 'in_flight', 'parked')) OR (ciphertext IS NULL AND nonce IS NULL)
) NOT VALID;
ALTER TABLE pcns_deliveries VALIDATE CONSTRAINT ciphertext_only_while_open;

-- A target's parked deliveries, newest first (operators' lists, retry, the gauges, expiry).
CREATE INDEX pcns_deliveries_parked ON pcns_deliveries (target, id) WHERE state = 'parked';

-- A held target's pending deliveries wait (not claimed) until it is released. `until` only
-- announces the planned end of the maintenance window; the hold lasts until released.
CREATE TABLE pcns_target_holds (
    target   text PRIMARY KEY,
    held_at  timestamptz NOT NULL DEFAULT now(),
    until    timestamptz,
    actor    text NOT NULL,
    reason   text
);

-- Who did what to which deliveries or targets: each bulk action with its filter and count.
CREATE TABLE pcns_operator_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    filter  jsonb NOT NULL DEFAULT '{}',
    count   integer NOT NULL
);

-- The claim (migration 004) learns two things: a held target's deliveries are not claimed, and
-- a parked delivery counts among its account's changes. The newest of the pending and parked
-- changes of a (target, account) is the one that may be delivered: an older parked or pending
-- one is superseded when a newer change is claimed (or was delivered), and while the newest is
-- parked the older pending ones are superseded and nothing is claimed for the account.
CREATE OR REPLACE FUNCTION pcns_claim_deliveries(
    p_limit integer, p_lease_token uuid, p_lease_seconds float8, p_max_age_seconds float8
) RETURNS TABLE (
    id uuid, change_id uuid, target text, account text, attempts integer, key_id text,
    nonce bytea, ciphertext bytea, state text, age float8
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_targets text[] := '{}';
    v_accounts text[] := '{}';
    v_row record;
    -- Held targets' deliveries wait; the list is read once (a handful of rows at most).
    v_held text[] := ARRAY(SELECT h.target FROM pcns_target_holds h);
BEGIN
    FOR v_row IN
        SELECT d.id, d.target, d.account FROM pcns_deliveries d
        WHERE d.state = 'pending' AND d.due_at <= now() AND d.target <> ALL (v_held)
        ORDER BY d.due_at
    LOOP
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(
            hashtextextended(v_row.target || chr(31) || v_row.account, 0));
        -- The walk reads the snapshot of its start: a row another claim took and committed
        -- since then is skipped here (this statement's snapshot is fresh), not counted.
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM pcns_deliveries d WHERE d.id = v_row.id AND d.state = 'pending');
        v_targets := v_targets || v_row.target;
        v_accounts := v_accounts || v_row.account;
        EXIT WHEN cardinality(v_targets) >= p_limit;
    END LOOP;
    IF cardinality(v_targets) = 0 THEN
        RETURN;
    END IF;
    -- Step 2, on a fresh snapshot taken with the key locks held. Per locked key: nothing
    -- while one is in flight (one in flight per account); otherwise claim the newest pending
    -- row if due (or expire it when too old) and supersede every older pending row, and
    -- supersede all of them when a newer change was already delivered or failed.
    RETURN QUERY
    WITH k AS (
        SELECT DISTINCT u.target, u.account FROM unnest(v_targets, v_accounts) AS u(target, account)
    ), r AS (
        SELECT d.id, d.target, d.account, d.state, d.order_at, d.seq,
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
