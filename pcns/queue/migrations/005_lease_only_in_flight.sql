-- A lease token exists exactly while a delivery is in flight: the claim sets it with the state,
-- and every way out of in_flight (outcome, release, reaper) clears it in the same statement.
-- Holding this in the schema lets an outcome find its row by primary key and lease token alone:
-- a condition on state would steer the planner to the in-flight partial index, whose estimate
-- (nearly no in-flight rows at the last analyze) hides the dead entries of every row leased
-- since the last vacuum, and each outcome would scan them all.
-- A token left on a row that is no longer in flight means nothing: clear it, so the constraint
-- can be added to any existing queue.
UPDATE pcns_deliveries SET lease_token = NULL, lease_until = NULL
WHERE state <> 'in_flight' AND lease_token IS NOT NULL;
ALTER TABLE pcns_deliveries ADD CONSTRAINT lease_only_while_in_flight
    CHECK ((state = 'in_flight') = (lease_token IS NOT NULL));
