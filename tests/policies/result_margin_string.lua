-- expect: fallback result: second result
-- A string expected margin.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_margin_string" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return 1, 'lots'
  end
  return offer.margin
end

return policy
