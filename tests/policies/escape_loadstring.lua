-- expect: fallback runtime: attempt to call global 'loadstring'
-- Reaches for loadstring, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_loadstring" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    loadstring('return 1')()
  end
  return offer.margin
end

return policy
