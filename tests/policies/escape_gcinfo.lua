-- expect: fallback runtime: attempt to call global 'gcinfo'
-- Reaches for gcinfo, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_gcinfo" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    gcinfo()
  end
  return offer.margin
end

return policy
