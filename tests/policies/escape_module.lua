-- expect: fallback runtime: attempt to call global 'module'
-- Reaches for module, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_module" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    module('x')
  end
  return offer.margin
end

return policy
