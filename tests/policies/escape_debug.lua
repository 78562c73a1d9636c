-- expect: fallback runtime: attempt to index global 'debug'
-- Reaches for debug, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_debug" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    debug.getregistry()
  end
  return offer.margin
end

return policy
