-- expect: fallback result: nan
-- A NaN score.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_nan" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return 0 / 0
  end
  return offer.margin
end

return policy
