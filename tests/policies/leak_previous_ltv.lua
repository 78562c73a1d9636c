-- expect: fallback runtime: built when the policy loaded
-- Scores each customer with the previous customer's ltv, kept in a table
-- built at load: the write is refused, so the score cannot depend on
-- another customer.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local last = { ltv = 0 }

local policy = { name = "leak_previous_ltv" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local before = last.ltv
    last.ltv = customer.ltv
    return before
  end
  return offer.margin
end

return policy
