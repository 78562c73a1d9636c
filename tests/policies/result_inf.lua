-- expect: fallback result: inf
-- An infinite score.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_inf" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return math.huge
  end
  return offer.margin
end

return policy
