-- Test cases of policies/margin_per_session.lua, with policies/tests/catalog.json:
--   nbx policy test policies/margin_per_session.lua --catalog policies/tests/catalog.json \
--       policies/tests/margin_per_session_test.lua
-- Each case is a customer, a session and what the decision must show
-- (docs/policy-guide.md). The expected margin of an offer is
-- P(accept) x unit margin - serving cost.

local consenting = { personalization = true, email = false }

return {
  {
    name = "offers rank by expected margin: the jacket (0.1 x 60) wins the hero",
    customer = { consent = consenting, propensity = { jacket = 0.1 } },
    as_of = "2026-03-10T12:00:00Z",
    expect = {
      top = { hero = "jacket" },
      score_between = { jacket = { 5.97, 5.99 }, socks = { 0.69, 0.71 } },
    },
  },
  {
    name = "a discount above the catalog's 30 % never shows, whatever it scores",
    customer = { consent = consenting, propensity = { deep_discount = 0.9 } },
    as_of = "2026-03-10T12:00:00Z",
    expect = { excluded = { deep_discount = "guardrail" }, not_shown = { "deep_discount" } },
  },
  {
    name = "free shipping shown 3 times this week is capped",
    customer = {
      consent = consenting,
      propensity = { free_shipping = 0.9 },
      exposures = { free_shipping = { impressions = 3, last_impression = "2026-03-09T18:00:00Z" } },
    },
    as_of = "2026-03-10T12:00:00Z",
    expect = { excluded = { free_shipping = "frequency" }, not_shown = { "free_shipping" } },
  },
  {
    name = "free shipping shown 3 times two weeks ago is back",
    customer = {
      consent = consenting,
      propensity = { free_shipping = 0.9 },
      exposures = { free_shipping = { impressions = 3, last_impression = "2026-02-20T18:00:00Z" } },
    },
    as_of = "2026-03-10T12:00:00Z",
    expect = { top = { hero = "free_shipping" }, excluded = { free_shipping = false } },
  },
  {
    name = "an anonymous visitor gets the modules that need no consent",
    as_of = "2026-03-10T12:00:00Z",
    expect = {
      top = { hero = "brand_banner", recs = "bestsellers" },
      excluded = { jacket = "consent" },
      fallback = false,
    },
  },
  {
    name = "the newsletter needs the email consent",
    customer = { consent = consenting },
    placements = { "recs" },
    as_of = "2026-03-10T12:00:00Z",
    expect = { excluded = { newsletter = "consent" } },
  },
  {
    name = "five contacts this week: nothing more is shown",
    customer = {
      consent = consenting,
      exposures = { jacket = { impressions = 3 }, socks = { impressions = 2 } },
    },
    as_of = "2026-03-10T12:00:00Z",
    expect = { top = { hero = false, recs = false }, excluded = { winback_20 = "contacts" } },
  },
}
