-- retention: for customers likely to churn, show retention offers first;
-- for everyone else rank by expected margin, as margin_per_session does.
--
-- A customer is at risk when their churn score is at least
-- params.churn_threshold, or their RFM segment is one of params.segments.
-- For an at-risk customer, an offer whose category is in params.categories
-- ranks ahead of every other offer (score = params.boost + expected margin),
-- unless its expected margin is below params.min_expected_margin: a
-- retention offer that loses money in expectation gets no boost. Within each
-- group, candidates rank by expected margin, and the expected margin is what
-- the policy reports as the second result in every case.
--
-- params are read once, when the policy loads: edit the file to change them.
-- See docs/policies.md.

local policy = {
  name = "retention",
  params = {
    churn_threshold = 0.5,
    segments = { "at_risk", "cant_lose", "hibernating" },
    categories = { "retention" },
    boost = 1e6,
    min_expected_margin = 0,
  },
}

local params = policy.params
-- Locals are one lookup; the global nbx goes through the frozen environment.
local expected_margin = nbx.expected_margin
local churn_threshold, boost, floor =
  params.churn_threshold, params.boost, params.min_expected_margin

-- Sets, so each check is one lookup rather than a walk over a list.
local function set_of(list)
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  return set
end
local risky_segments = set_of(params.segments)
local retention_categories = set_of(params.categories)

local function at_risk(customer)
  local churn = customer.churn
  if churn ~= nil and churn >= churn_threshold then
    return true
  end
  local segment = customer.rfm.segment
  return segment ~= nil and risky_segments[segment] == true
end

function policy.score(offer, customer, session)
  local m = expected_margin(customer, offer)
  local category = offer.category
  if category ~= nil and retention_categories[category] and m >= floor
      and at_risk(customer) then
    return boost + m, m
  end
  return m, m
end

return policy
