-- expect: fallback runtime: attempt to call global 'gcinfo'
-- Reaches for gcinfo, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_gcinfo" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    gcinfo()
  end
  return offer.margin
end

return policy
