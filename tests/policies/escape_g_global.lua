-- expect: fallback runtime: attempt to index global '_G'
-- Reaches for _G, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_g_global" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    _G.x = 1
  end
  return offer.margin
end

return policy
