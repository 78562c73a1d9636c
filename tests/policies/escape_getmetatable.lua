-- expect: fallback runtime: attempt to call global 'getmetatable'
-- Reaches for getmetatable, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_getmetatable" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    getmetatable('').__index.rep = nil
  end
  return offer.margin
end

return policy
