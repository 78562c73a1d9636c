-- Test cases of policies/retention.lua, with policies/tests/catalog.json:
--   nbx policy test policies/retention.lua --catalog policies/tests/catalog.json \
--       policies/tests/retention_test.lua
-- A customer is at risk with churn >= 0.5 or an RFM segment of at_risk,
-- cant_lose or hibernating; for them, retention offers with a positive
-- expected margin rank first (score = 1,000,000 + expected margin).

local consenting = { personalization = true }

return {
  {
    name = "an at-risk customer sees the winback offer before a better-earning jacket",
    customer = {
      consent = consenting,
      propensity = { jacket = 0.3 },
      rfm = { orders = 6, r = 2, f = 4, m = 4, segment = "at_risk" },
    },
    placements = { "hero" },
    as_of = "2026-03-10T12:00:00Z",
    expect = {
      top = { hero = "winback_20" },
      -- the segment prior: 0.2 x 24 - 0.02 = 4.78, plus the boost
      score_between = { winback_20 = { 1000004.77, 1000004.79 } },
    },
  },
  {
    name = "a high churn score is at risk too, without a segment",
    customer = { consent = consenting, churn = 0.8, propensity = { jacket = 0.3 } },
    placements = { "hero" },
    as_of = "2026-03-10T12:00:00Z",
    expect = { top = { hero = "winback_20" } },
  },
  {
    name = "a champion is ranked by expected margin: the jacket wins",
    customer = {
      consent = consenting,
      propensity = { jacket = 0.3 },
      rfm = { orders = 15, r = 5, f = 5, m = 5, segment = "champions" },
    },
    placements = { "hero" },
    as_of = "2026-03-10T12:00:00Z",
    expect = { top = { hero = "jacket" }, score_between = { winback_20 = { 0, 1 } } },
  },
  {
    name = "a retention offer that loses money in expectation gets no boost",
    customer = { consent = consenting, churn = 0.9 },
    placements = { "recs" },
    as_of = "2026-03-10T12:00:00Z",
    -- loyalty_points: 0.05 x 0.5 - 0.1 < 0
    expect = { score_between = { loyalty_points = { -1, 0 } }, not_shown = { "loyalty_points" } },
  },
  {
    name = "without consent to personalisation nobody is at risk: no boost",
    customer = {
      consent = { personalization = false },
      churn = 0.9,
      rfm = { orders = 6, r = 2, f = 4, m = 4, segment = "at_risk" },
    },
    as_of = "2026-03-10T12:00:00Z",
    expect = { top = { hero = "brand_banner" }, excluded = { winback_20 = "consent" } },
  },
}
