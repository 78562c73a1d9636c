-- expect: fallback runtime: attempt to call global 'xpcall'
-- Reaches for xpcall, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_xpcall" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    xpcall(error, print)
  end
  return offer.margin
end

return policy
