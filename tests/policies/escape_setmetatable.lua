-- expect: fallback runtime: attempt to call global 'setmetatable'
-- Reaches for setmetatable, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_setmetatable" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    setmetatable({}, { __gc = function() end })
  end
  return offer.margin
end

return policy
