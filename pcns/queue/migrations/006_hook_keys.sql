-- Hook recipient keys: P-256 key pairs that hooks seal changes to (RFC 9180 HPKE). The private
-- scalar is stored only wrapped by the KEK, like a data key; the public point is what a hook is
-- configured with. One key is current (the one to hand out); older active ones still open what
-- a hook sealed before it was reconfigured; a retired one is destroyed.

CREATE TABLE pcns_hook_keys (
    id          text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('current', 'active', 'retired')),
    kek_ref     text NOT NULL,
    wrapped     bytea,
    public_key  bytea NOT NULL CHECK (length(public_key) = 65),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    CONSTRAINT hook_key_destroyed_when_retired CHECK ((state = 'retired') = (wrapped IS NULL))
);
CREATE UNIQUE INDEX pcns_hook_keys_one_current ON pcns_hook_keys (state) WHERE state = 'current';
