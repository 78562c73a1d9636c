-- expect: fallback result: nil
-- No score at all.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_nil" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return
  end
  return offer.margin
end

return policy
