-- The claim in one round trip. The two steps of the claim protocol run inside this function,
-- called as one statement outside an explicit transaction:
--  1. walk the due pending rows in due order and take, per (target, account), a
--     transaction-scoped advisory lock, skipping rows whose key another claimer holds, until
--     p_limit rows are ours. The key lock is the only lock taken here: rows are locked only by
--     step 2's UPDATE, of keys this claim holds, so two claims never wait on each other (row
--     locks taken before the key lock let two claimers each hold a row of the other's key and
--     deadlock). Walking with a cursor takes each key lock only when the walk reaches its row,
--     whatever plan the query gets (a lock call in a WHERE could run on every pending row);
--  2. the function is VOLATILE, so in READ COMMITTED its next statement takes a fresh snapshot:
--     it sees every claim committed before the key locks were taken, decides each key from that
--     state and applies the decision. The key locks and the UPDATE's row locks are held until
--     the calling statement's transaction commits, and the claim commits with it.
-- Returns the rows it changed: 'in_flight' (leased to p_lease_token), 'superseded', 'expired'.

CREATE FUNCTION pcns_claim_deliveries(
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
BEGIN
    FOR v_row IN
        SELECT d.id, d.target, d.account FROM pcns_deliveries d
        WHERE d.state = 'pending' AND d.due_at <= now()
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
        WHERE d.state IN ('pending', 'in_flight', 'delivered', 'failed')
    ), a AS MATERIALIZED (  -- once, not once per pending row joined to it
        SELECT r.target, r.account,
               bool_or(r.state = 'in_flight') AS busy,
               (array_agg(r.id ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state = 'pending'))[1] AS newest_id,
               (array_agg(r.order_at ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state = 'pending'))[1] AS newest_at,
               (array_agg(r.seq ORDER BY r.order_at DESC, r.seq DESC)
                   FILTER (WHERE r.state = 'pending'))[1] AS newest_seq,
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
                   WHEN r.too_old THEN 'expired'
                   WHEN r.due THEN 'in_flight'
               END AS state
        FROM r JOIN a ON r.target = a.target AND r.account = a.account
        WHERE r.state = 'pending'
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
    WHERE d.id = x.id AND x.state IS NOT NULL AND d.state = 'pending'
    RETURNING d.id, d.change_id, d.target, d.account, d.attempts, d.key_id, d.nonce,
              d.ciphertext, x.state, extract(epoch FROM now() - d.created_at)::float8;
END
$$;
