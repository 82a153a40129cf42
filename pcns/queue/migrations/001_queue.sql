-- Password changes as received, and one delivery per (change, target).
-- A delivery's ciphertext lives only while the delivery is not terminal.

CREATE TABLE pcns_changes (
    id           uuid PRIMARY KEY,
    source       text NOT NULL,
    webhook_id   text NOT NULL,
    user_name    text NOT NULL,
    domain       text,
    upn          text,
    sid          text,
    changed_at   timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now(),
    response     text NOT NULL,      -- the 202 body, replayed byte for byte on a resend
    UNIQUE (source, webhook_id)
);

CREATE TABLE pcns_deliveries (
    id           uuid PRIMARY KEY,
    change_id    uuid NOT NULL REFERENCES pcns_changes (id),
    target       text NOT NULL,
    account      text NOT NULL,
    -- Order among changes of one (target, account): the DC's change time when it gave one,
    -- then arrival order. An older password is never written after a newer one.
    order_at     timestamptz NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN (
                     'pending', 'in_flight', 'delivered', 'failed',
                     'superseded', 'expired', 'cancelled')),
    attempts     integer NOT NULL DEFAULT 0,
    due_at       timestamptz NOT NULL DEFAULT now(),
    lease_token  uuid,
    lease_until  timestamptz,
    last_error   text,
    key_id       text,
    nonce        bytea,
    ciphertext   bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT ciphertext_only_while_open CHECK (
        (state IN ('pending', 'in_flight')) OR (ciphertext IS NULL AND nonce IS NULL)
    )
);

-- Matches the claim query exactly: due pending deliveries in due order.
CREATE INDEX pcns_deliveries_claim ON pcns_deliveries (due_at) WHERE state = 'pending';
-- Expired leases, found by the reaper.
CREATE INDEX pcns_deliveries_leases ON pcns_deliveries (lease_until) WHERE state = 'in_flight';
-- Per (target, account) ordering, for supersede and the one-in-flight rule.
CREATE INDEX pcns_deliveries_account ON pcns_deliveries (target, account, order_at, seq);
CREATE INDEX pcns_deliveries_change ON pcns_deliveries (change_id);
-- Queue depth and oldest pending age per target.
CREATE INDEX pcns_deliveries_open ON pcns_deliveries (target, created_at)
    WHERE state IN ('pending', 'in_flight');
