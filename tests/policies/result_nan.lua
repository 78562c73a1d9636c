-- expect: fallback result: nan
-- A NaN score.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_nan" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return 0 / 0
  end
  return offer.margin
end

return policy
