-- expect: fallback result: a string
-- A numeric string is still not a number.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_string" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return '12'
  end
  return offer.margin
end

return policy
