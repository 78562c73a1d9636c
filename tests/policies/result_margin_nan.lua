-- expect: fallback result: second result
-- A NaN expected margin.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_margin_nan" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return 1, 0 / 0
  end
  return offer.margin
end

return policy
