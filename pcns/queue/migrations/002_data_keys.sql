-- Envelope encryption: data keys live here, only ever wrapped by a key-encryption key (KEK)
-- that never enters the database. Exactly one data key is primary.

CREATE TABLE pcns_data_keys (
    id           text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('primary', 'active', 'decrypt-only', 'retired')),
    kek_ref      text NOT NULL,
    wrapped      bytea,
    encryptions  bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz,
    -- A retired key is destroyed: its wrapped form is gone, nothing else is.
    CONSTRAINT destroyed_when_retired CHECK ((state = 'retired') = (wrapped IS NULL))
);
CREATE UNIQUE INDEX pcns_data_keys_one_primary ON pcns_data_keys (state) WHERE state = 'primary';

-- Who did what to which key, and when; never key material.
CREATE TABLE pcns_key_audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    key_id   text,
    detail   jsonb NOT NULL DEFAULT '{}'
);

-- Queued ciphertexts per data key: for rewrap, retire and the per-key gauge.
CREATE INDEX pcns_deliveries_sealed_by ON pcns_deliveries (key_id) WHERE ciphertext IS NOT NULL;
