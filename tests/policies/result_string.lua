-- expect: fallback result: a string
-- A numeric string is still not a number.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_string" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return '12'
  end
  return offer.margin
end

return policy
