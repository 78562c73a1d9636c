-- margin_per_session: rank every candidate by the contribution margin it is
-- expected to earn if shown in this session.
--
--   expected margin = P(accept) x unit margin - serving cost
--
-- P(accept) is nbx.propensity(customer, offer): the profile's propensity for
-- the offer id, else for the offer's category, else the offer's prior for the
-- customer's RFM segment, else the offer's base_propensity. unit margin is
-- offer.margin (price - unit_cost - discount). The score is the expected
-- margin itself, and it is also returned as the expected margin.
--
-- Offers that lose money in expectation still get a (negative) score: the
-- catalog's guardrails (min_margin, max_discount_pct) decide what may be
-- shown at all, and arbitration fills placements best first.
-- See docs/policies.md.

local policy = {
  name = "margin_per_session",
  params = {},
}

-- nbx.expected_margin_score(offer, customer, session) returns exactly
--   local m = nbx.expected_margin(customer, offer); return m, m
-- and because score *is* that built-in, the sandbox computes it in C, with
-- the same arithmetic, instead of calling into Lua for every candidate.
-- To change the formula, write score as a Lua function instead; e.g.
--   function policy.score(offer, customer, session)
--     local m = nbx.expected_margin(customer, offer)
--     return m, m
--   end
policy.score = nbx.expected_margin_score

return policy
