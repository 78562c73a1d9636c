-- expect: fallback result: inf
-- An infinite score.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_inf" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return math.huge
  end
  return offer.margin
end

return policy
