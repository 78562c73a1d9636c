-- expect: fallback runtime: attempt to call global 'newproxy'
-- Reaches for newproxy, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_newproxy" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    newproxy(true)
  end
  return offer.margin
end

return policy
