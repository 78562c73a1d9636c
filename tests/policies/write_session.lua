-- expect: fallback runtime: attempt to write field 'placement'
-- Tries: session.placement = 'hero'
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_session" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    session.placement = 'hero'
  end
  return offer.margin
end

return policy
