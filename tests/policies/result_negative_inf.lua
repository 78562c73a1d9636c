-- expect: fallback result: -inf
-- A negative infinite score.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_negative_inf" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return -1 / 0
  end
  return offer.margin
end

return policy
