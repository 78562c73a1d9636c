-- expect: fallback runtime: attempt to call global 'setmetatable'
-- Reaches for setmetatable, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_setmetatable" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    setmetatable({}, { __gc = function() end })
  end
  return offer.margin
end

return policy
