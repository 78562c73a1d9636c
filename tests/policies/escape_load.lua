-- expect: fallback runtime: attempt to call global 'load'
-- Reaches for load, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_load" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    load(function() return nil end)
  end
  return offer.margin
end

return policy
