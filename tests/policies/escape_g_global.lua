-- expect: fallback runtime: attempt to index global '_G'
-- Reaches for _G, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_g_global" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    _G.x = 1
  end
  return offer.margin
end

return policy
