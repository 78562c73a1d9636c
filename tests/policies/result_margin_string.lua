-- expect: fallback result: second result
-- A string expected margin.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_margin_string" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return 1, 'lots'
  end
  return offer.margin
end

return policy
