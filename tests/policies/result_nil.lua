-- expect: fallback result: nil
-- No score at all.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_nil" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return
  end
  return offer.margin
end

return policy
