-- expect: fallback runtime: attempt to call global 'xpcall'
-- Reaches for xpcall, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_xpcall" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    xpcall(error, print)
  end
  return offer.margin
end

return policy
