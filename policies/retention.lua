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

local function at_risk(customer)
  local churn = customer.churn
  if churn ~= nil and churn >= params.churn_threshold then
    return true
  end
  local segment = customer.rfm.segment
  return segment ~= nil and nbx.contains(params.segments, segment)
end

function policy.score(offer, customer, session)
  local m = nbx.expected_margin(customer, offer)
  if m >= params.min_expected_margin and nbx.contains(params.categories, offer.category)
      and at_risk(customer) then
    return params.boost + m, m
  end
  return m, m
end

return policy
