-- expect: fallback runtime: assignment to global 'margin'
-- Tries: margin = 5
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "write_global" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    margin = 5
  end
  return offer.margin
end

return policy
