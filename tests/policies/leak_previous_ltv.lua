-- expect: fallback runtime: built when the policy loaded
-- Scores each customer with the previous customer's ltv, kept in a table
-- built at load: the write is refused, so the score cannot depend on
-- another customer.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local last = { ltv = 0 }

local policy = { name = "leak_previous_ltv" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local before = last.ltv
    last.ltv = customer.ltv
    return before
  end
  return offer.margin
end

return policy
